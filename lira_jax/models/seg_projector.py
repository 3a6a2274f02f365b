"""`projector_text2vision` (lira_reference.md §7.2): LLM hidden states at [SEG] positions ->
OMG-Seg decoder queries, an xtuner `ProjectorModel` of depth 2: Linear(H -> 2C) -> exact GELU ->
Linear(2C -> 2C). Parameters fc0 / fc2 mirror the released `projector_text2vision.model.{0,2}`.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

import lira_jax  # noqa: F401  (disables eager sharding)
from lira_jax.models.sefe import GeluMLP


class TextToVision(GeluMLP):
  """f32[..., H] -> f32[..., 2C]: [:C] the query content, [C:] the query position embedding (the
  layout of [final decoder query ‖ query_embed] that `forward_seg` takes). out_dim = 2C."""

  def __init__(self, hidden_size: int, out_dim: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__((hidden_size, out_dim, out_dim),
                     [('embed', 'seg_mlp'), ('seg_mlp', 'seg_embed')], dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)
