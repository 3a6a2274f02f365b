"""The sharded train step: one jax.jit over a (data, fsdp, tensor) mesh with explicit in/out
shardings, donated state, gradient accumulation by lax.scan, and a skipped (not applied) update
when the loss or the gradient norm is non-finite.

The model is split once into a graphdef and two States: `trainable` (the stage's selection,
cfg.trainable) and `frozen` (every other Param plus non-Param variables such as the LoRA dropout
RNG counters). Only `trainable` is differentiated and has optimizer state. Compute runs in
cfg.model.dtype (e.g. bfloat16) against master weights kept in cfg.model.param_dtype (float32):
the layers cast their parameters at use, so gradients and Adam moments stay float32.

Axis letters: A micro-batches per step (cfg.optim.grad_accum), B micro-batch size.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lira_jax import sharding
from lira_jax.models.lira import LIRA
from lira_jax.train import step as step_lib
from lira_jax.train.objective import lira_loss

BATCH_AXES = ('data', 'fsdp')


@struct.dataclass
class TrainState:
  """trainable / frozen: nnx States of the split model; opt_state: optax state of `trainable`;
  step i32[]: steps taken (applied or skipped); skipped i32[]: steps whose update was skipped."""
  trainable: nnx.State
  frozen: nnx.State
  opt_state: Any
  step: jax.Array
  skipped: jax.Array


def _build_model(cfg, seed: int) -> LIRA:
  model = LIRA(cfg, rngs=nnx.Rngs(seed))
  step_lib.add_lora(model, cfg, nnx.Rngs(seed + 1))
  return model


def _split(model: LIRA, cfg) -> tuple[nnx.GraphDef, TrainState]:
  graphdef, trainable, frozen = nnx.split(model, step_lib.trainable_filter(cfg), ...)
  tx, _ = step_lib.make_tx(cfg, 1)  # the state layout does not depend on the schedule length
  zero = jnp.zeros((), jnp.int32)
  return graphdef, TrainState(trainable, frozen, tx.init(trainable), zero, zero)


def _initial_state(cfg, seed: int) -> TrainState:
  return _split(_build_model(cfg, seed), cfg)[1]


def _divisible(s: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
  """Replicates the dimensions whose size the mesh axes do not divide (e.g. a 207-row
  vocabulary on tensor=2): jit arguments must split evenly."""
  spec = []
  for dim, axes in zip(shape, tuple(s.spec) + (None,) * (len(shape) - len(s.spec))):
    names = axes if isinstance(axes, tuple) else (axes,)
    size = math.prod(s.mesh.shape[a] for a in names if a is not None)
    spec.append(axes if dim % size == 0 else None)
  return NamedSharding(s.mesh, P(*spec))


def abstract_train_state(cfg, mesh: Mesh, *, seed: int = 0
                         ) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """(graphdef, TrainState of ShapeDtypeStructs carrying their shardings, TrainState of
  NamedShardings) without allocating anything; what a checkpoint restores into."""
  init = functools.partial(_initial_state, cfg, seed)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: _build_model(cfg, seed)))
  abstract = jax.eval_shape(init)
  replicated = NamedSharding(mesh, P())
  trainable = sharding.state_shardings(abstract.trainable, mesh)
  tx, _ = step_lib.make_tx(cfg, 1)
  shardings = TrainState(
      trainable=trainable,
      frozen=sharding.state_shardings(abstract.frozen, mesh),
      opt_state=optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, trainable,
                                      transform_non_params=lambda _: replicated),
      step=replicated, skipped=replicated)
  shardings = jax.tree.map(lambda s, a: _divisible(s, a.shape), shardings, abstract)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return graphdef, abstract, shardings


def build_train_state(cfg, mesh: Mesh, *, seed: int = 0
                      ) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """(graphdef, initial TrainState placed by the logical rules, its NamedShardings). The
  parameters are created directly in their shards (the init is jitted with out_shardings)."""
  graphdef, _, shardings = abstract_train_state(cfg, mesh, seed=seed)
  return graphdef, compile_state_init(cfg, shardings, seed=seed)(), shardings


def compile_state_init(cfg, shardings: TrainState, *, seed: int = 0):
  """build_train_state's initialiser, compiled but not run: calling it creates the state. It
  holds no arrays, so it can be compiled while another stage trains."""
  init = jax.jit(functools.partial(_initial_state, cfg, seed), out_shardings=shardings)
  # The init runs once: on CPU its compile time is what counts (the tiny default's: 13.5 s at
  # LLVM -O3, 7.7 s at -O0; it then runs in 0.1 s instead of 0.03 s).
  options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
  return init.lower().compile(compiler_options=options)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Every batch leaf is split over (data, fsdp) on its leading (example) axis."""
  return NamedSharding(mesh, P(BATCH_AXES))


def abstract_host_batch(batch: dict, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global arrays that loop.put_batch makes of this process's rows (numpy arrays), as
  shapes to compile for."""
  sharding = batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct((v.shape[0] * jax.process_count(), *v.shape[1:]), v.dtype,
                                  sharding=sharding) for k, v in batch.items()}


def _split_micro(x: jax.Array, accum: int) -> jax.Array:
  """[A·B, ...] -> [A, B, ...] with micro-batch a = examples a, a+A, a+2A, ...: every device keeps
  its own rows, so the split moves no data across the mesh."""
  x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:])
  return jnp.swapaxes(x, 0, 1)


def _combine_parts(parts: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Per-micro-batch logged parts [A] -> per step: counts add up, everything else averages."""
  return {k: v.sum(0) if k.startswith('num_') else v.mean(0) for k, v in parts.items()}


def make_sharded_train_step(cfg, mesh: Mesh, graphdef: nnx.GraphDef, shardings: TrainState, *,
                            total_steps: int, seed: int = 0):
  """step(state, batch) -> (new state, metrics). batch: LIRA inputs + gt_masks, each leaf
  [A·B, ...] with A = cfg.optim.grad_accum. The input state is donated. metrics (f32/i32
  scalars, replicated): loss, the objective's parts, grad_norm (before clipping), lr (of this
  update), skipped (1 when the update was not applied)."""
  tx, schedule = step_lib.make_tx(cfg, total_steps)
  accum = int(cfg.optim.grad_accum)
  trainable = step_lib.trainable_filter(cfg)
  micro_sharding = NamedSharding(mesh, P(None, BATCH_AXES))
  base_key = jax.random.key(seed)

  def loss_fn(train_params, frozen, micro, rng):
    # copy: fresh Variables owned by this trace, so dropout may advance their RNG counters.
    model = nnx.merge(graphdef, train_params, frozen, copy=True)
    loss, parts = lira_loss(model, micro, rng, cfg.loss)
    # Dropout advanced its RNG counters: carry them to the next micro-batch / step.
    _, _, frozen = nnx.split(model, trainable, ...)
    return loss, (parts, frozen)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(base_key, state.step)
    micro = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
        _split_micro(x, accum), micro_sharding), batch)

    def body(carry, xs):
      grads, frozen = carry
      mb, i = xs
      (loss, (parts, frozen)), g = jax.value_and_grad(loss_fn, has_aux=True)(
          state.trainable, frozen, mb, jax.random.fold_in(rng, i))
      return (jax.tree.map(jnp.add, grads, g), frozen), (loss, parts)

    zeros = jax.tree.map(jnp.zeros_like, state.trainable)
    # One micro-batch: unrolled, since a length-1 scan is still a while loop (its carried
    # gradient buffers cost the tiny default ~10 ms per step on 2 CPU cores).
    (grads, frozen), (losses, parts) = jax.lax.scan(
        body, (zeros, state.frozen), (micro, jnp.arange(accum)), unroll=accum == 1)
    grads = jax.tree.map(lambda g: g / accum, grads)
    loss = losses.mean()
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    new_params = optax.apply_updates(state.trainable, updates)
    keep_if_skipped = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    skipped = (~finite).astype(jnp.int32)
    metrics = {**_combine_parts(parts), 'loss': loss, 'grad_norm': grad_norm,
               'lr': schedule(state.step - state.skipped), 'skipped': skipped}
    new_state = TrainState(trainable=keep_if_skipped(new_params, state.trainable), frozen=frozen,
                           opt_state=keep_if_skipped(opt_state, state.opt_state),
                           step=state.step + 1, skipped=state.skipped + skipped)
    return new_state, metrics

  return jax.jit(train_step, in_shardings=(shardings, batch_sharding(mesh)),
                 out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)
