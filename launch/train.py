"""Train LIRA stage by stage, then evaluate; the README's main job.

  python -m launch.train [--config configs/tiny_synthetic.py[:ARGS]] [--workdir DIR]
                         [--stages 0,1,2] [--no-eval]

With no flags: the tiny LIRA of configs/tiny_synthetic.py trained from scratch on the synthetic
referring world (stage 0 pre-trains the pixel path on panoptic scenes, then stage 1 and stage 2,
each seeded from the one before), evaluated on the val split (RES
cIoU/gIoU, GRES cIoU/gIoU/N-acc/T-acc), a metrics table printed, PNG overlays and metrics.json
written; the last output line is the metrics.json path. Each stage resumes from its latest
checkpoint in WORKDIR/stageN, so re-running after an interruption continues where it stopped; a
SIGTERM checkpoints at the next step and exits cleanly (code 0). `--stages 2` on a workdir
whose stage 1 has a checkpoint starts stage 2 from it.
"""
from __future__ import annotations

if __name__ == '__main__':  # before JAX starts: huge pages for XLA's per-step buffers
  from launch import host_env
  host_env.restart_with_huge_pages()

import argparse
import ast
import concurrent.futures
import functools
import json
import os
import time

import jax

import lira_jax  # noqa: F401
from configs.common import stage_config
from lira_jax import distributed, sharding
from lira_jax.data import pipeline
from lira_jax.data.tokenizers import load_tokenizer
from lira_jax.eval.synthetic import compile_predict, evaluate
from lira_jax.train.compile_ahead import StageCompilation
from lira_jax.train.loop import stage_dir, stage_finished, train_stage

DEFAULT_CONFIG = 'configs/tiny_synthetic.py'
TABLE_KEYS = ('res_ciou', 'res_giou', 'gres_ciou', 'gres_giou', 'gres_nacc', 'gres_tacc',
              'gcg_phrase_acc')


def print_table(result: dict) -> None:
  names = [k for k in TABLE_KEYS if k in result]
  print('| ' + ' | '.join(names) + ' | train_seconds |')
  print('|' + '---|' * (len(names) + 1))
  print('| ' + ' | '.join(f'{result[k]:.4f}' for k in names) +
        f' | {result["train_seconds"]:.0f} |')


def apply_overrides(cfg, overrides: list[str]):
  """`a.b=value` strings set cfg.a.b; the value is read as a Python literal when it parses as
  one (numbers, True, lists), else kept as a string (paths)."""
  for item in overrides:
    path, sep, text = item.partition('=')
    if not sep:
      raise ValueError(f'--set {item!r}: expected key.path=value')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = path.split('.')
    node = cfg
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise KeyError(f'--set {item!r}: the config has no {path}')
    node[leaf] = value
  return cfg


def _has_checkpoint(stage_workdir: str) -> bool:
  ckpts = os.path.join(stage_workdir, 'checkpoints')
  return os.path.isdir(ckpts) and any(name.isdigit() for name in os.listdir(ckpts))


def _with_seed_stage(workdir: str, stages: list[int]) -> list[int]:
  """A run that starts at stage s > 0 seeds it from stage s - 1 of the same workdir when that
  stage has a checkpoint (restored; trained on first if it was interrupted), as a full run
  would; without one, stage s starts from its initialisation and the log says so."""
  first = stages[0] if stages else 0
  if first == 0 or _has_checkpoint(stage_dir(workdir, first)):
    return stages
  if _has_checkpoint(stage_dir(workdir, first - 1)):
    print(f'stage {first} starts from stage {first - 1} of {workdir}', flush=True)
    return [first - 1, *stages]
  print(f'stage {first} starts from its initialisation: no stage {first - 1} checkpoint in '
        f'{workdir}', flush=True)
  return stages


class _StageSetup:
  """A stage's config (with the overrides), tokenizer, mesh and dataset factory."""

  def __init__(self, config: str, stage: int, overrides):
    self.cfg = apply_overrides(stage_config(config, stage), list(overrides))
    self.tokenizer = load_tokenizer(self.cfg)
    self.mesh = sharding.make_mesh(dict(self.cfg.mesh))

  def make_dataset(self, num_batches: int):
    return pipeline.train_dataset(self.cfg, self.tokenizer, num_batches=num_batches)


class _CompileAhead:
  """Once the first stage to train has started, compiles the programs of the stages after it
  (and, with do_eval, the evaluation's predict function) on one background thread, one after
  another: XLA compiles on one core, and training leaves part of the other idle (README "The
  main job", session 21). Stages already finished are skipped (they are only restored). Disabled, it
  compiles nothing ahead: each stage compiles in place when it starts.

  On the 2-core CPU machine it measured zero-sum (session 21: the later stages and the evaluation
  started ~70 s sooner, the first stage's steps ran ~70 s slower while it compiled beside them),
  so `--compile-ahead auto` leaves it off on the CPU backend and on elsewhere."""

  def __init__(self, workdir: str, stages: list[int], setups: dict, do_eval: bool,
               enabled: bool = True):
    self._workdir, self._stages, self._setups, self._do_eval = workdir, stages, setups, do_eval
    self._executor = concurrent.futures.ThreadPoolExecutor(1)
    self._started = not enabled
    self.stages: dict[int, StageCompilation] = {}
    self.predict: concurrent.futures.Future | None = None

  def start_hook(self, stage: int):
    """train_stage's on_start for `stage`: None once compiling ahead has started."""
    return None if self._started else functools.partial(self._start, stage)

  def _start(self, first: int) -> None:
    self._started = True
    for stage in self._stages[self._stages.index(first) + 1:]:
      s = self._setups[stage]
      if not stage_finished(s.cfg, stage_dir(self._workdir, stage)):
        self.stages[stage] = StageCompilation(s.cfg, s.mesh, s.make_dataset, self._executor)
    final = self.stages.get(self._stages[-1])
    if self._do_eval and final:
      s = self._setups[self._stages[-1]]
      self.predict = self._executor.submit(lambda: compile_predict(
          s.cfg, final.graphdef, (final.abstract.trainable, final.abstract.frozen),
          s.tokenizer, s.mesh))

  def close(self, cancel: bool = False) -> None:
    self._executor.shutdown(cancel_futures=cancel)


def run(config: str, workdir: str, stages: list[int], do_eval: bool = True,
        overrides: list[str] = (), compile_ahead: str = 'auto') -> str | None:
  """Trains `stages` in order and evaluates the last; returns the metrics.json path, or None
  when a SIGTERM stopped training (checkpointed: the same call resumes).

  compile_ahead: on | off | auto (on unless the backend is the CPU); see _CompileAhead."""
  if compile_ahead not in ('on', 'off', 'auto'):
    raise ValueError(f'compile_ahead must be on, off or auto, not {compile_ahead!r}')
  began = time.monotonic()
  os.makedirs(workdir, exist_ok=True)
  stages = _with_seed_stage(workdir, list(stages))
  result = dict(config=config, train_seconds=0.0, devices=jax.device_count())
  setups = {stage: _StageSetup(config, stage, overrides) for stage in stages}
  last = setups[stages[-1]]
  do_eval = do_eval and last.cfg.data.get('kind', 'synthetic') == 'synthetic'  # its val split
  ahead = _CompileAhead(workdir, stages, setups, do_eval, enabled=compile_ahead == 'on' or (
      compile_ahead == 'auto' and jax.default_backend() != 'cpu'))
  state = graphdef = None
  for stage in stages:
    s = setups[stage]
    print(f'stage {stage}: {s.cfg.train.steps} steps of batch {s.cfg.train.batch_size} on mesh '
          f'{dict(s.mesh.shape)}', flush=True)
    graphdef, state, summary = train_stage(s.cfg, stage_dir(workdir, stage), s.mesh,
                                           s.make_dataset, init_from=state,
                                           compiled=ahead.stages.get(stage),
                                           on_start=ahead.start_hook(stage))
    result['train_seconds'] += summary['train_seconds']
    result[f'stage{stage}'] = summary
    if summary['preempted']:
      ahead.close(cancel=True)
      return None
  ahead.close()
  if do_eval:
    t0 = time.monotonic()
    if ahead.predict:
      print('  evaluation compiled while training', flush=True)
    result.update(evaluate(last.cfg, graphdef, (state.trainable, state.frozen), last.tokenizer,
                           last.mesh, overlay_dir=os.path.join(workdir, 'overlays'),
                           predict=ahead.predict and ahead.predict.result()))
    result['eval_seconds'] = time.monotonic() - t0
  result['total_seconds'] = time.monotonic() - began
  path = os.path.abspath(os.path.join(workdir, 'metrics.json'))
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  if do_eval:
    print_table(result)
  return path


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default=DEFAULT_CONFIG,
                      help='config file[:args]; the stage is appended to the args')
  parser.add_argument('--workdir', default='runs/tiny_synthetic')
  parser.add_argument('--stages', default='0,1,2', help='comma list of stages to run, in order')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override, e.g. data.root=/data/lira (repeatable)')
  parser.add_argument('--no-eval', action='store_true')
  parser.add_argument('--compile-ahead', choices=('auto', 'on', 'off'), default='auto',
                      help='compile later stages and the evaluation while the first stage trains '
                      '(auto: on unless the backend is the CPU, where 2 cores measured no gain)')
  parser.add_argument('--coordinator', help='HOST:PORT of process 0 (multi-host without SLURM '
                      'or a TPU pod environment; see lira_jax/distributed.py)')
  parser.add_argument('--num-processes', type=int)
  parser.add_argument('--process-id', type=int)
  args = parser.parse_args(argv)
  how = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  if how != 'single':
    print(f'process {jax.process_index()} of {jax.process_count()} ({how}); '
          f'{jax.device_count()} devices in all', flush=True)
  path = run(args.config, args.workdir, [int(s) for s in args.stages.split(',')],
             do_eval=not args.no_eval, overrides=args.set, compile_ahead=args.compile_ahead)
  print(path or f'preempted; resume with the same command (workdir {args.workdir})')


if __name__ == '__main__':
  main()
