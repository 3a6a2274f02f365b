"""Grouped-query attention, a fixed-size KV cache, and masks/positions built from validity.

Einsum legend:
  B batch, T query tokens, S key tokens (the new tokens, or the whole cache buffer),
  N query heads, K key/value heads, G = N / K query heads per KV head, H head dim,
  L layers.

Padding may sit anywhere (left, right, or inside a sequence, e.g. tokens appended mid-generation
that are real for some samples only). Every token has a buffer index; a query at buffer index t
sees the valid keys at buffer indices ≤ t, and the position id of a token is the number of valid
tokens before it (cumulative validity − 1), so padding never shifts positions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

# Masked scores get the most negative finite float32 rather than -inf: a query with no visible key
# (a padding query) then gets a harmless uniform average instead of NaNs.
_MASKED = float(jnp.finfo(jnp.float32).min)


def gqa_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """softmax(q·kᵀ / sqrt(H)) v with query head n using KV head n // G.

  q f32[B, T, N, H], k/v f32[B, S, K, H], mask bool[B, T, S] (True = may attend) -> f32[B, T, N, H].
  Scores and softmax are float32 whatever the compute dtype.
  """
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, t, kv_heads, n // kv_heads, h)
  scores = jnp.einsum('btkgh,bskh->bkgts', q, k, preferred_element_type=jnp.float32)
  scores = scores / jnp.sqrt(float(h))
  scores = jnp.where(mask[:, None, None], scores, _MASKED)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum('bkgts,bskh->btkgh', probs, v).reshape(b, t, n, h)


def positions_from_valid(valid: jax.Array, start: jax.Array | int = 0) -> jax.Array:
  """Position ids i32[B, T] = start + (valid tokens up to and including this one) − 1.

  valid bool[B, T]; start i32[B] (tokens already in the cache) or 0. A padding token gets the
  position of the valid token before it; its output is never used.
  """
  start = jnp.asarray(start, jnp.int32)
  start = start[:, None] if start.ndim else start
  return start + jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1


def causal_mask(query_index: jax.Array, key_valid: jax.Array) -> jax.Array:
  """bool[B, T, S]: the query at buffer index query_index[t] (i32[T]) may attend to the valid
  keys (key_valid bool[B, S]) at buffer indices ≤ it."""
  key_index = jnp.arange(key_valid.shape[-1], dtype=jnp.int32)
  causal = key_index[None, :] <= query_index[:, None]
  return causal[None] & key_valid[:, None, :]


def write_at(buffer: jax.Array, new: jax.Array, index: jax.Array, axis: int) -> jax.Array:
  """Writes `new` into `buffer` at `index` along `axis` (slots [index, index + new.shape[axis])).
  index i32[] (every row alike) or i32[B] (one offset per row of the batch axis, axis - 1)."""
  new = new.astype(buffer.dtype)
  index = jnp.asarray(index, jnp.int32)
  if index.ndim == 0:
    return jax.lax.dynamic_update_slice_in_dim(buffer, new, index, axis)
  row = lambda b, n, i: jax.lax.dynamic_update_slice_in_dim(b, n, i, axis - 1)
  return jax.vmap(row, in_axes=(axis - 1, axis - 1, 0), out_axes=axis - 1)(buffer, new, index)


def chunk_mask(valid_before: jax.Array, valid_after: jax.Array, start: jax.Array, size: int
               ) -> jax.Array:
  """bool[B, C, S] for a chunk of C = size new tokens written at buffer slots [start, start + C)
  (start i32[] or i32[B]): every token already in the cache (valid_before bool[B, S]: all of
  them come earlier in sequence order, wherever they sit in the buffer) plus the valid new
  tokens up to itself (valid_after bool[B, S]: the validity once the chunk is written)."""
  key = jnp.arange(valid_before.shape[-1], dtype=jnp.int32)[None, None, :]
  start = jnp.broadcast_to(jnp.asarray(start, jnp.int32), valid_before.shape[:1])[:, None, None]
  last = start + jnp.arange(size, dtype=jnp.int32)[None, :, None]
  return valid_before[:, None, :] | (valid_after[:, None, :] & (key >= start) & (key <= last))


@struct.dataclass
class KVCache:
  """Fixed-size per-layer key/value buffers for incremental decoding (a pytree; jit-friendly).

  All samples share one write index: each call writes the same number of slots for every sample
  and `valid` marks which of them hold real tokens. A chunk may also go to per-sample slots
  outside that stream (LLM.extend with `slots`, e.g. ILVC region tokens in a reserved tail):
  attention follows validity, not buffer order, so such tokens are seen by everything after.

  k, v: f32[L, B, S, K, H] keys (already rotated) and values; S is the buffer capacity.
  valid: bool[B, S] which buffer slots hold real tokens.
  index: i32[] next buffer slot to write.
  next_pos: i32[B] position id of the next valid token (= valid tokens so far).
  """
  k: jax.Array
  v: jax.Array
  valid: jax.Array
  index: jax.Array
  next_pos: jax.Array

  @classmethod
  def create(cls, *, num_layers: int, batch: int, max_len: int, num_kv_heads: int,
             head_dim: int, dtype=jnp.float32) -> 'KVCache':
    shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
               valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32),
               next_pos=jnp.zeros((batch,), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.valid.shape[1]
