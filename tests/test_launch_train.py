"""launch.train as a user runs it: a run killed with SIGKILL after a checkpoint and started again
resumes from that checkpoint and produces the same per-step losses as an uninterrupted run.

The three processes share a persistent compilation cache, so only the first one compiles."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ['-m', 'launch.train', '--config', 'configs/tiny_synthetic.py:smoke', '--stages', '1',
        '--no-eval']


def _env(cache_dir):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='', JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', PYTHONUNBUFFERED='1')
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  return env


def _losses(workdir):
  """step -> loss, the last row logged for each step (a resumed run re-logs the steps it redoes)."""
  with open(os.path.join(workdir, 'stage1', 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {r['step']: r['loss'] for r in rows}


def _start(workdir, cache_dir):
  return subprocess.Popen([sys.executable, *ARGS, '--workdir', workdir], cwd=ROOT,
                          env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _finish(proc, timeout=900):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_losses(tmp_path):
  cache = str(tmp_path / 'jax_cache')
  straight, broken = str(tmp_path / 'straight'), str(tmp_path / 'broken')
  _finish(_start(straight, cache))
  want = _losses(straight)
  assert sorted(want) == list(range(1, 9))

  proc = _start(broken, cache)
  checkpoint = os.path.join(broken, 'stage1', 'checkpoints', '2')
  deadline = time.monotonic() + 600
  while True:
    logged = _losses(broken) if os.path.exists(os.path.join(broken, 'stage1',
                                                            'metrics.jsonl')) else {}
    if os.path.isdir(checkpoint) and max(logged, default=0) >= 3:
      break
    assert proc.poll() is None, 'the run ended before it could be killed'
    assert time.monotonic() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL

  out = _finish(_start(broken, cache))
  assert 'resumed from step' in out
  got = _losses(broken)
  assert sorted(got) == sorted(want)
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), step
