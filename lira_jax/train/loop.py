"""One training stage end to end: build or restore the sharded state, stream batches through the
compiled step, log, checkpoint, resume automatically.

A stage's workdir holds checkpoints/ (train state + data-iterator state, newest N kept) and
metrics.jsonl + tb/. Re-running a stage whose last checkpoint is its final step only restores it.
Checkpoints are written asynchronously (orbax), so the next steps run while one is saved.

Preemption: SIGTERM (what SLURM, Kubernetes and TPU maintenance send before a kill) is caught;
at the next step boundary every process agrees to stop, the state is checkpointed at that step
and the stage returns with summary['preempted'] set, so the job can exit cleanly and a restart
resumes from exactly there.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lira_jax import param_io
from lira_jax.models.mask_decoder import SEG_COPY_SOURCES
from lira_jax.train import metrics as metrics_lib
from lira_jax.train import sharded_step
from lira_jax.train.checkpoint import Checkpointer
from lira_jax.train.compile_ahead import StageCompilation
from lira_jax.train.losses import LOSS_KEYS

log_line = functools.partial(print, flush=True)


def _keyed(tree) -> dict[str, jax.Array]:
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def transfer_params(state: sharded_step.TrainState, source: sharded_step.TrainState
                    ) -> tuple[sharded_step.TrainState, int]:
  """Copies into `state` (trainable and frozen) every variable that `source` has at the same
  path with the same shape, placed with the target's sharding; optimizer state stays fresh.
  A variable the source lacks that is a [SEG]-path decoder copy (mask_decoder.SEG_COPY_SOURCES)
  starts from the panoptic original, as OMG-LLaVA's `init_new_decoder` does.
  Returns (new state, number of variables copied)."""
  src = {**_keyed(source.trainable), **_keyed(source.frozen)}
  copied = 0

  def original(key: str) -> jax.Array | None:
    for copy, name in SEG_COPY_SOURCES.items():
      key = key.replace(f"['{copy}']", f"['{name}']")
    y = src.get(key)
    return None if y is None else jnp.copy(y)  # its own buffer: train states are donated

  def pick(path, x):
    nonlocal copied
    key = jax.tree_util.keystr(path)
    y = src[key] if key in src else original(key)
    if y is None or y.shape != x.shape or y.dtype != x.dtype:
      return x
    copied += 1
    return jax.device_put(y, x.sharding)

  new = state.replace(trainable=jax.tree_util.tree_map_with_path(pick, state.trainable),
                      frozen=jax.tree_util.tree_map_with_path(pick, state.frozen))
  return new, copied


class Preemption:
  """Records a SIGTERM instead of dying; `requested()` is the same on every process."""

  def __init__(self):
    self.signalled = False

  @contextlib.contextmanager
  def installed(self):
    previous = signal.signal(signal.SIGTERM, self._note)
    try:
      yield self
    finally:
      signal.signal(signal.SIGTERM, previous)

  def _note(self, signum, frame):
    del signum, frame
    self.signalled = True

  def requested(self) -> bool:
    if jax.process_count() == 1:
      return self.signalled
    # One host may get the signal before the others: all stop at the same step.
    return bool(np.any(multihost_utils.process_allgather(np.int32(self.signalled))))


def load_converted_params(state: sharded_step.TrainState, directory: str
                          ) -> tuple[sharded_step.TrainState, list[str]]:
  """Sets every parameter of `state` found in a converted checkpoint (convert/, lira_jax.param_io
  format: dotted param paths), placed with the state's shardings. Every stored array must land
  (else ValueError: a mismatched model, not something to train past); returns the new state and
  the model parameters the checkpoint did not have (e.g. fresh LoRA adapters)."""
  stored = param_io.load_params(directory)
  used, fresh = set(), []

  def fill(tree):
    flat = nnx.to_flat_state(tree)
    for path, var in flat:
      name = '.'.join(map(str, path))
      if name not in stored:
        fresh.append(name)
        continue
      if stored[name].shape != var.value.shape:
        raise ValueError(f'{name}: checkpoint {stored[name].shape} vs model {var.value.shape}')
      var.value = jax.device_put(stored[name].astype(var.value.dtype), var.value.sharding)
      used.add(name)
    return nnx.from_flat_state(flat)

  state = state.replace(trainable=fill(state.trainable), frozen=fill(state.frozen))
  unused = sorted(set(stored) - used)
  if unused:
    raise ValueError(f'{len(unused)} arrays of {directory} match no model parameter, e.g. '
                     f'{unused[:3]}')
  return state, sorted(fresh)


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows -> global arrays split over (data, fsdp)."""
  sharding = sharded_step.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _log_row(m: dict, steps: int, seconds: float, batch: dict) -> dict[str, float]:
  row = {k: float(v) for k, v in m.items()}
  row['step_time'] = seconds / max(steps, 1)
  if 'text_valid' in batch:  # stage 0 batches are images only
    row['tokens_per_s'] = (float(np.sum(batch['text_valid'])) * jax.process_count() /
                           row['step_time'])
  return row


def stage_finished(cfg, workdir: str) -> bool:
  """Whether workdir holds the checkpoint of the stage's last step (train_stage only restores)."""
  ckpt = Checkpointer(workdir, max_to_keep=int(cfg.train.keep_checkpoints))
  done = _at_final_step(ckpt, cfg)
  ckpt.close()
  return done


def _at_final_step(ckpt: Checkpointer, cfg) -> bool:
  return (ckpt.latest_step() or 0) >= int(cfg.train.steps)


def train_stage(cfg, workdir: str, mesh: Mesh, make_dataset, *, init_from=None,
                compiled: StageCompilation | None = None, on_start=None, log=log_line
                ) -> tuple[object, sharded_step.TrainState, dict]:
  """Runs cfg.train.steps steps of cfg's stage (resuming from workdir's latest checkpoint).

  make_dataset(num_batches) -> a grain IterDataset of host batches; init_from: a TrainState of
  an earlier stage whose matching params seed a fresh start; compiled: the stage's programs,
  compiled ahead (else compiled here while the state is restored or initialised); on_start():
  called once, just before the first step. Returns (graphdef, final state, summary dict with
  'train_seconds', 'steps_run', 'skipped')."""
  t = cfg.train
  total = int(t.steps)
  ckpt = Checkpointer(workdir, max_to_keep=int(t.keep_checkpoints))

  if _at_final_step(ckpt, cfg):  # finished earlier: nothing to compile or train
    graphdef, abstract, _ = sharded_step.abstract_train_state(cfg, mesh, seed=t.seed)
    state, _ = ckpt.restore(abstract)
    ckpt.close()
    return graphdef, state, dict(train_seconds=0.0, steps_run=0, skipped=int(state.skipped),
                                 preempted=False)

  began = time.monotonic()  # train_seconds include compiling and initialising the state
  if compiled:
    log('  compiled while an earlier stage trained')
  # XLA compiles on one core: the step and the initialiser compile side by side (the tiny
  # default's stage 0: 22 s and 14 s, which used to add up).
  own_pool = None if compiled else concurrent.futures.ThreadPoolExecutor(2)
  compiled = compiled or StageCompilation(cfg, mesh, make_dataset, own_pool)

  def init():
    state = compiled.init()()
    if t.get('init_params'):
      state, fresh = load_converted_params(state, t.init_params)
      log(f'  initialised from {t.init_params}; {len(fresh)} variables kept fresh')
    if init_from is not None:
      state, copied = transfer_params(state, init_from)
      log(f'  initialised {copied} variables from the previous stage')
    return state

  iterator = iter(make_dataset(total))
  first_position = iterator.get_state()
  graphdef = compiled.graphdef
  state, data_state = ckpt.restore_or(compiled.abstract, init)
  step_fn = compiled.step()
  if own_pool:
    own_pool.shutdown()
  iterator.set_state(data_state or first_position)
  start = int(state.step)
  if start:
    log(f'  resumed from step {start} ({ckpt.manager.directory})')
  summary = dict(train_seconds=0.0, steps_run=0, skipped=int(state.skipped), preempted=False)
  writer = metrics_lib.MetricsWriter(workdir)
  progress = metrics_lib.Progress(total)
  if on_start:
    on_start()
  last = time.monotonic()
  last_step = step = start
  with Preemption().installed() as preemption:
    for step in range(start + 1, total + 1):
      batch = next(iterator)
      state, m = step_fn(state, put_batch(batch, mesh))
      if step % int(t.log_every) == 0 or step == total:
        m = jax.device_get(m)  # waits for the step, so the interval below is compute time
        now = time.monotonic()
        row = _log_row(m, step - last_step, now - last, batch)
        last, last_step = now, step
        writer.write(step, row)
        shown = {k: row[k] for k in ('loss', *LOSS_KEYS) if k in row}
        log(progress.line(step, shown), end='\r' if sys.stdout.isatty() else '\n')
      stop = preemption.requested()
      if step % int(t.checkpoint_every) == 0 or step == total or stop:
        ckpt.save(step, state, iterator.get_state(), force=True)
      if stop:
        log(f'\n  preempted (SIGTERM): checkpoint at step {step}; run again to resume')
        summary['preempted'] = True
        break
  ckpt.wait()
  ckpt.close()
  writer.close()
  log('')
  summary.update(train_seconds=time.monotonic() - began, steps_run=step - start,
                 skipped=int(state.skipped))
  return graphdef, state, summary


def stage_dir(workdir: str, stage: int) -> str:
  return os.path.join(workdir, f'stage{stage}')
