"""Ahead-of-time plan of a train step: per-device memory by kind and FLOPs, from abstract inputs.

Nothing is allocated: the train state comes from jax.eval_shape with its NamedShardings, the batch
is ShapeDtypeStructs, and the step is lowered and compiled for the mesh (simulated host devices
are enough to plan a GPU/TPU mesh of the same shape).

Memory per device:
  params     the shard of every parameter (trainable and frozen), from its sharding
  optimizer  the shard of every optimizer-state leaf
  gradients  the shard of the float32 gradient accumulator (one per trainable parameter)
  batch      the shard of the step's inputs
  activations  the residuals the backward pass keeps for one micro-batch (what the remat policy
               saves), divided over the batch axes: jax.ad_checkpoint.saved_residuals
  temporary  XLA's temp buffer for the compiled step minus gradients and activations (work
             space, fusion outputs, collectives' buffers), floored at 0
  total = params + optimizer + temporary + gradients + activations + batch
XLA reports one temp figure per device that holds activations, gradients and workspace alike; the
split above is an estimate, the total is XLA's (arguments + temp, donated state aliased).

FLOPs: XLA's cost analysis counts a while loop's body once, so scanned layers and the
micro-batch scan would be undercounted by their trip counts. `jaxpr_flops` walks the traced step
(forward, backward and rematerialised recomputation) and multiplies each scan body's count by its
length: 2·M·N·K per dot_general plus convolutions.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
# The function behind the public jax.ad_checkpoint.print_saved_residuals (which only prints).
from jax._src.ad_checkpoint import saved_residuals
from jax.extend import core as jex_core

from lira_jax.train import sharded_step
from lira_jax.train.objective import lira_loss


def _shard_bytes(x) -> int:
  shape = x.sharding.shard_shape(x.shape) if hasattr(x, 'sharding') and x.sharding else x.shape
  return int(math.prod(shape)) * jnp.dtype(x.dtype).itemsize


def tree_shard_bytes(tree) -> int:
  """Bytes one device holds of a pytree of ShapeDtypeStructs / arrays with shardings."""
  leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, 'shape')]
  return sum(_shard_bytes(x) for x in leaves if not jax.dtypes.issubdtype(x.dtype,
                                                                           jax.dtypes.prng_key))


def _dot_flops(eqn) -> float:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
  contract = math.prod(lhs.shape[d] for d in lc)
  batch = math.prod(lhs.shape[d] for d in lb)
  free_l = math.prod(s for d, s in enumerate(lhs.shape) if d not in lc and d not in lb)
  free_r = math.prod(s for d, s in enumerate(rhs.shape) if d not in rc and d not in rb)
  return 2.0 * batch * free_l * free_r * contract


def _conv_flops(eqn) -> float:
  out = eqn.outvars[0].aval
  rhs = eqn.invars[1].aval
  dn = eqn.params['dimension_numbers']
  kernel_in = rhs.shape[dn.rhs_spec[1]]  # input features per group
  window = math.prod(rhs.shape[d] for d in dn.rhs_spec[2:])
  return 2.0 * math.prod(out.shape) * kernel_in * window


def jaxpr_flops(jaxpr) -> float:
  """Matmul + convolution FLOPs of a (closed) jaxpr, scan bodies times their length; a cond
  counts its most expensive branch; while loops (not in a train step) count their body once."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_flops(eqn)
    elif name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    elif name == 'scan':
      total += eqn.params['length'] * jaxpr_flops(eqn.params['jaxpr'])
    elif name == 'cond':
      total += max(jaxpr_flops(b) for b in eqn.params['branches'])
    else:
      for sub in jex_core.jaxprs_in_params(eqn.params):
        total += jaxpr_flops(sub)
  return total


def abstract_batch(cfg, mesh, global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The train step's inputs (synthetic.encode_sample's layout) for `global_batch` examples
  per step, split over the batch axes."""
  m, q = cfg.model, cfg.seq
  s, t = m.omg.image_size, m.vision.image_size
  sharding = sharded_step.batch_sharding(mesh)
  shapes = dict(
      pixels=((s, s, 3), jnp.float32), tiles=((q.max_tiles, t, t, 3), jnp.float32),
      tile_valid=((q.max_tiles,), bool), regions=((q.max_regions, t, t, 3), jnp.float32),
      region_valid=((q.max_regions,), bool), ids=((q.max_len,), jnp.int32),
      labels=((q.max_len,), jnp.int32), text_valid=((q.max_len,), bool),
      gt_masks=((q.max_seg, s, s), jnp.float32))
  return {k: jax.ShapeDtypeStruct((global_batch, *shape), dtype, sharding=sharding)
          for k, (shape, dtype) in shapes.items()}


def activation_bytes(cfg, graphdef, abstract, micro_batch: dict, batch_shards: int) -> int:
  """Residuals saved for the backward pass of one micro-batch, per device."""
  def loss(trainable, frozen, batch):
    # Only `trainable` is differentiated in the step: without these stop_gradients the frozen
    # encoders' activations would count as residuals too.
    frozen, batch = jax.tree.map(
        lambda x: jax.lax.stop_gradient(x) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        (frozen, batch))
    model = nnx.merge(graphdef, trainable, frozen)
    return lira_loss(model, batch, jax.random.key(0), cfg.loss)[0]

  residuals = saved_residuals(loss, abstract.trainable, abstract.frozen, micro_batch)
  # Parameters (and their casts) show up as residuals too: they are counted under params.
  param_shapes = {(x.shape, jnp.dtype(x.dtype)) for x in jax.tree.leaves(abstract.trainable)
                  + jax.tree.leaves(abstract.frozen)
                  if hasattr(x, 'shape') and not jax.dtypes.issubdtype(x.dtype,
                                                                       jax.dtypes.prng_key)}
  kept = [aval for aval, _ in residuals
          if aval.shape and not jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key)
          and (aval.shape, jnp.dtype(aval.dtype)) not in param_shapes]
  total = sum(int(math.prod(a.shape)) * jnp.dtype(a.dtype).itemsize for a in kept)
  return total // max(batch_shards, 1)


def plan_train_step(cfg, mesh, *, global_batch: int) -> dict[str, Any]:
  """Lowers and compiles the sharded train step for abstract inputs; returns per-device bytes by
  kind, XLA's figures and the step's FLOPs (all devices)."""
  graphdef, abstract, shardings = sharded_step.abstract_train_state(cfg, mesh)
  step = sharded_step.make_sharded_train_step(cfg, mesh, graphdef, shardings, total_steps=1000)
  batch = abstract_batch(cfg, mesh, global_batch)
  traced = step.trace(abstract, batch)
  flops = jaxpr_flops(traced.jaxpr)
  accum = int(cfg.optim.grad_accum)
  batch_shards = mesh.shape['data'] * mesh.shape['fsdp']
  micro = {k: jax.ShapeDtypeStruct((v.shape[0] // accum, *v.shape[1:]), v.dtype)
           for k, v in batch.items()}
  activations = activation_bytes(cfg, graphdef, abstract, micro, batch_shards)
  compiled = traced.lower().compile()
  mem = compiled.memory_analysis()
  params = tree_shard_bytes(abstract.trainable) + tree_shard_bytes(abstract.frozen)
  optimizer = tree_shard_bytes(abstract.opt_state)
  gradients = tree_shard_bytes(jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=x.sharding),
      abstract.trainable))
  temp = int(mem.temp_size_in_bytes)
  out = dict(params=params, optimizer=optimizer, gradients=gradients,
             activations=activations, temporary=max(temp - gradients - activations, 0),
             batch=tree_shard_bytes(batch))
  xla_total = int(mem.argument_size_in_bytes) + temp + max(
      int(mem.output_size_in_bytes) - int(mem.alias_size_in_bytes), 0)
  return dict(per_device_bytes=out, total_bytes=max(sum(out.values()), xla_total),
              xla=dict(argument=int(mem.argument_size_in_bytes), temp=temp,
                       output=int(mem.output_size_in_bytes), alias=int(mem.alias_size_in_bytes)),
              flops_per_step=flops, devices=int(np.prod(list(mesh.shape.values()))))


def mfu(flops_per_step: float, step_seconds: float, devices: int, peak_flops: float) -> float:
  """Model FLOPs utilisation: achieved FLOP/s over the mesh's peak."""
  return flops_per_step / (step_seconds * devices * peak_flops)
