"""Orbax checkpoints of the whole train state plus the data-iterator state, keep-last-N, resume.

What is saved: every leaf of the TrainState (trainable and frozen parameters, optimizer state,
step counters). The frozen part is saved too so that a workdir resumes on its own, without the
converted base checkpoint it started from (at 8B the frozen encoders dominate the size; a run
that needs smaller checkpoints can re-load them from the base instead).

The tree is stored as a flat {dotted path: array} dict: that is independent of the pytree node
classes (nnx Variables, optax NamedTuples) and readable without this code. PRNG key arrays are
stored as their raw uint32 data. Restoring needs an abstract TrainState whose leaves carry the
target NamedShardings (sharded_step.abstract_train_state rebuilds them from the logical rules
on the current mesh), so arrays land directly in their shards, on any mesh shape.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

STATE, DATA = 'state', 'data'


def _flat(tree) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p, simple=True, separator='.'): x for p, x in leaves}


def _is_key(x) -> bool:
  return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_saveable(x):
  return jax.random.key_data(x) if _is_key(x) else x


def _restore_target(a: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
  if _is_key(a):
    data = jax.eval_shape(jax.random.key_data, a)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=a.sharding)
  return a


def _from_saved(x, a: jax.ShapeDtypeStruct):
  # nnx.Rngs makes keys with the default implementation (threefry).
  return jax.random.wrap_key_data(x) if _is_key(a) else x


class Checkpointer:
  """Checkpoints under `workdir`/checkpoints; keeps the newest `max_to_keep`; saves only every
  `save_interval_steps` unless forced. Saving is asynchronous; `wait()` / `close()` finish it."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, save_interval_steps: int = 1):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           save_interval_steps=save_interval_steps)
    self.manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                                         options=options, item_names=(STATE, DATA))

  def save(self, step: int, state, data_state: dict | None = None, *, force: bool = False
           ) -> bool:
    """Saves the train state and a JSON-serialisable data-iterator state; True if saved."""
    flat = {k: _to_saveable(v) for k, v in _flat(state).items()}
    return self.manager.save(int(step), force=force, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(flat), DATA: ocp.args.JsonSave(data_state or {})}))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict]:
    """(state with the structure and shardings of `abstract_state`, data-iterator state) of
    `step` (default: the latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.manager.directory}')
    abstract = _flat(abstract_state)
    target = {k: _restore_target(a) for k, a in abstract.items()}
    out = self.manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(target), DATA: ocp.args.JsonRestore()}))
    restored = out[STATE]
    leaves = [_from_saved(restored[k], a) for k, a in abstract.items()]
    return jax.tree.unflatten(jax.tree.structure(abstract_state), leaves), dict(out[DATA] or {})

  def restore_or(self, abstract_state, init_fn) -> tuple[Any, dict]:
    """Automatic resume: the latest checkpoint if there is one, else (init_fn(), {})."""
    if self.latest_step() is None:
      return init_fn(), {}
    return self.restore(abstract_state)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
