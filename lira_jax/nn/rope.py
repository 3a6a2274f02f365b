"""Rotary position embedding (rotate-half / GPT-NeoX convention) with dynamic NTK scaling.

Axis letters: B batch, T tokens, N heads, H head dim, F = H / 2 frequencies.

Dynamic NTK (InternLM2, transformers' "dynamic" rope type): when a sequence of total length L
exceeds `max_position_embeddings` (M), the base becomes θ · (factor·L/M − (factor−1))^(H/(H−2)).
L is a traced per-sample value here, so the base is computed inside jit and a change in the number
of valid tokens never changes a static shape or triggers a recompilation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def inv_freq(base: jax.Array | float, head_dim: int) -> jax.Array:
  """1 / base^(2k/H) in float32, f32[..., F] for base f32[...] (the reference tables are fp32)."""
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  base = jnp.asarray(base, jnp.float32)[..., None]
  return 1.0 / (base ** exponents)


def dynamic_ntk_base(theta: float, length: jax.Array, *, factor: float,
                     max_position_embeddings: int, head_dim: int) -> jax.Array:
  """Rope base for total lengths `length` i32[B] -> f32[B]; plain θ while length ≤ M."""
  length = jnp.maximum(length, max_position_embeddings).astype(jnp.float32)
  stretch = factor * length / max_position_embeddings - (factor - 1.0)
  return theta * stretch ** (head_dim / (head_dim - 2))


def rope_base(cfg, length: jax.Array) -> jax.Array:
  """Per-sample base f32[B] from an `llm_config` and the per-sample total length i32[B]."""
  scaling = cfg.rope_scaling
  if scaling is None:
    return jnp.full(length.shape, cfg.rope_theta, jnp.float32)
  if scaling.type != 'dynamic':
    raise ValueError(f'unsupported rope_scaling type {scaling.type!r}')
  return dynamic_ntk_base(cfg.rope_theta, length, factor=scaling.factor,
                          max_position_embeddings=cfg.max_position_embeddings,
                          head_dim=cfg.head_dim)


def cos_sin(positions: jax.Array, base: jax.Array, head_dim: int) -> tuple[jax.Array, jax.Array]:
  """Tables f32[B, T, H] for integer positions i32[B, T] and a per-sample base f32[B].

  The angles are built in float32 as in the references (`cat(freqs, freqs)` over the head dim).
  """
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq(base, head_dim)[:, None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x f32[B, T, N, H] rotated by tables f32[B, T, H] (shared by all heads)."""
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotate_half(x) * sin
