"""launch/host_env.py: the huge-page tunable the launcher restarts itself with."""
import os
import subprocess
import sys

import pytest

from launch import host_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
linux_only = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc tunables')


@linux_only
def test_adds_the_tunable_and_keeps_the_others():
  env = host_env.huge_page_environment({'PATH': '/bin'})
  assert env == {'PATH': '/bin', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  env = host_env.huge_page_environment({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


@pytest.mark.parametrize('environ', [
    {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'},  # the user's own choice wins
    {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'},  # already restarted: no loop
    {'LIRA_HUGE_PAGES': '0'},
])
def test_nothing_to_do(environ):
  assert host_env.huge_page_environment(environ) is None


@linux_only
def test_the_launcher_restarts_once_with_it_and_keeps_its_arguments():
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('GLIBC_TUNABLES', None)
  env.pop('LIRA_HUGE_PAGES', None)
  code = ('import os, sys\n'
          'from launch import host_env\n'
          'print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)\n'
          'host_env.restart_with_huge_pages()\n')
  out = subprocess.run([sys.executable, '-u', '-c', code, 'a', '--b'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=True).stdout.split('\n')
  first, second = out[0].split(' ', 2), out[1].split(' ', 2)
  assert first[1] == 'None' and second[1] == 'glibc.malloc.hugetlb=1'
  assert first[0] == second[0]  # exec: the same process, so signals and kill -9 still reach it
  assert first[2] == second[2] == "['a', '--b']"
  assert out[2:] == ['']  # restarted once, not again
