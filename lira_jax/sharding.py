"""The one place that maps logical parameter/activation axes to mesh axes (data, fsdp, tensor).

Every parameter carries logical axis names (`out_sharding`); `LOGICAL_RULES` turns them into a
PartitionSpec over the mesh. A config may pass its own rules table with the same structure.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

# logical axis -> mesh axis (or None = replicated). Order matters only for duplicates (first wins).
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ('act_batch', ('data', 'fsdp')),
    ('act_len', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    # language model
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('q_heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('layers', None),
    ('lora_rank', None),
    # vision encoders / projectors
    ('vit_embed', 'fsdp'),
    ('vit_qkv', 'tensor'),
    ('vit_mlp', 'tensor'),
    ('vit_pos', None),
    ('proj_in', 'fsdp'),
    ('conv_in', None),
    ('conv_out', 'tensor'),
    ('norm', None),
    # OMG-Seg head (frozen, small): replicated
    ('seg_embed', None),
    ('seg_mlp', None),
    ('seg_heads', None),
    ('seg_sampling', None),
    ('ov_embed', None),
)


def make_mesh(shape: dict[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh over (data, fsdp, tensor); one axis may be -1 ("the rest of the devices")."""
  devices = list(devices if devices is not None else jax.devices())
  shape = dict(shape or {'data': -1})
  sizes = [shape.get(a, 1) for a in MESH_AXES]
  known = math.prod(s for s in sizes if s != -1)
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} does not use all {len(devices)} devices')
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical: Sequence[str | None], rules=LOGICAL_RULES) -> PartitionSpec:
  return nn.logical_to_mesh_axes(tuple(logical), rules)


def state_shardings(state: nnx.State, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedSharding for every variable of an nnx State, from its logical axis names."""
  specs = nnx.get_partition_spec(state)
  specs = nn.logical_to_mesh(specs, rules)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))
