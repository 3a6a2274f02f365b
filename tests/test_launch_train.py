"""launch.train as a user runs it: a run killed with SIGKILL after a checkpoint, or preempted with
SIGTERM (checkpoint at the next step, clean exit), and started again resumes and produces the same
per-step losses as an uninterrupted run.

The processes share a persistent compilation cache, so only the first one compiles."""
import json
import os
import shutil
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


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """(compilation cache dir, step -> loss of an uninterrupted run)."""
  root = tmp_path_factory.mktemp('launch')
  cache, straight = str(root / 'jax_cache'), str(root / 'straight')
  _finish(_start(straight, cache))
  want = _losses(straight)
  assert sorted(want) == list(range(1, 9))
  return cache, want


def _wait_for(proc, workdir, ready):
  """Polls until ready(logged losses) holds while the run is still going."""
  deadline = time.monotonic() + 600
  metrics = os.path.join(workdir, 'stage1', 'metrics.jsonl')
  while not ready(_losses(workdir) if os.path.exists(metrics) else {}):
    assert proc.poll() is None, 'the run ended before it could be interrupted'
    assert time.monotonic() < deadline
    time.sleep(0.05)


def _resume_matches(workdir, cache, want):
  out = _finish(_start(workdir, cache))
  assert 'resumed from step' in out
  got = _losses(workdir)
  assert sorted(got) == sorted(want)
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), step


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_losses(uninterrupted, tmp_path):
  cache, want = uninterrupted
  broken = str(tmp_path / 'broken')
  proc = _start(broken, cache)
  checkpoint = os.path.join(broken, 'stage1', 'checkpoints', '2')
  _wait_for(proc, broken, lambda logged: os.path.isdir(checkpoint) and max(logged, default=0) >= 3)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  _resume_matches(broken, cache, want)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_cleanly_and_resumes(uninterrupted, tmp_path):
  cache, want = uninterrupted
  preempted = str(tmp_path / 'preempted')
  proc = _start(preempted, cache)
  _wait_for(proc, preempted, lambda logged: max(logged, default=0) >= 3)
  proc.send_signal(signal.SIGTERM)
  out = _finish(proc)  # exit code 0
  assert 'preempted (SIGTERM): checkpoint at step' in out
  stopped = int(out.split('checkpoint at step ')[1].split(';')[0])
  assert 3 <= stopped < 8
  steps = os.listdir(os.path.join(preempted, 'stage1', 'checkpoints'))
  assert str(stopped) in steps  # saved at the boundary, not only at checkpoint_every
  assert max(_losses(preempted)) <= stopped
  _resume_matches(preempted, cache, want)


def _stage_losses(workdir, stage):
  with open(os.path.join(workdir, f'stage{stage}', 'metrics.jsonl')) as f:
    return [json.loads(line)['loss'] for line in f if line.strip()]


@pytest.mark.slow
def test_programs_compiled_ahead_train_and_evaluate_as_compiled_in_place(tmp_path):
  """Stages 1 and 2 in one run, where stage 2's step and initialiser and the evaluation's predict
  function compile in the background while stage 1 trains (--compile-ahead on), give the losses
  and the metrics of the same run with everything compiled in place (auto: off on the CPU)."""
  cache = str(tmp_path / 'jax_cache')
  ahead, in_place = str(tmp_path / 'ahead'), str(tmp_path / 'in_place')
  run = lambda workdir, mode: _finish(subprocess.Popen(
      [sys.executable, *ARGS[:-3], '--stages', '1,2', '--workdir', workdir,
       '--compile-ahead', mode],
      cwd=ROOT, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  out = run(ahead, 'on')
  assert out.count('compiled while an earlier stage trained') == 1, out[-3000:]
  assert 'evaluation compiled while training' in out
  out = run(in_place, 'auto')
  assert 'compiled while' not in out
  for stage in (1, 2):
    want, got = _stage_losses(ahead, stage), _stage_losses(in_place, stage)
    assert len(want) == 8
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
  metrics = [json.load(open(os.path.join(w, 'metrics.json'))) for w in (ahead, in_place)]
  for key in ('res_ciou', 'gres_ciou', 'gres_nacc', 'res_right_object'):
    assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-6, abs=1e-6), key
