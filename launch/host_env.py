"""Host settings a launcher applies to its own process before JAX starts.

Huge pages for large host allocations. XLA:CPU allocates an executable's temporaries with malloc
on every call (the tiny default's stage-0 train step: one 225 MB block). glibc serves blocks over
32 MB with a fresh mmap and unmaps them on free, so each step page-faults the whole block in
again: 55 k faults of 4 KiB, ~80 ms of system CPU per 0.18 s step on the 2-core machine (session
26, strace + getrusage). glibc >= 2.35 advises its mmaps for transparent huge pages with the
tunable glibc.malloc.hugetlb=1 (a kernel whose THP mode is `madvise`, the usual default, then
backs them with 2 MiB pages). Tunables are read when a process starts, so the launcher
re-executes itself once with it set. Memory placement does not change what XLA computes: the
losses are bit-identical. On an older glibc the tunable is ignored; LIRA_HUGE_PAGES=0 skips it.
"""
from __future__ import annotations

import os
import sys

HUGE_PAGE_TUNABLE = 'glibc.malloc.hugetlb=1'


def huge_page_environment(environ) -> dict[str, str] | None:
  """environ with HUGE_PAGE_TUNABLE added to GLIBC_TUNABLES (others kept), or None when there
  is nothing to do: not Linux, already set (to any value), or LIRA_HUGE_PAGES=0."""
  if not sys.platform.startswith('linux') or environ.get('LIRA_HUGE_PAGES', '1') == '0':
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb=' in tunables:
    return None
  return dict(environ, GLIBC_TUNABLES=':'.join(filter(None, (tunables, HUGE_PAGE_TUNABLE))))


def restart_with_huge_pages() -> None:
  """Re-executes this Python process (same interpreter flags and arguments, same PID) with
  huge_page_environment, once; returns when there is nothing to do. Call it first thing in a
  launcher's `__main__`, before JAX or any thread starts."""
  environ = huge_page_environment(os.environ)
  if environ is not None:
    sys.stdout.flush()
    os.execve(sys.executable, sys.orig_argv, environ)
