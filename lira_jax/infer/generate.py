"""Greedy decoding with a KV cache, compiled end to end (no host sync per token).

Axis letters: B batch, T prompt buffer length, D hidden, V vocabulary, N new tokens.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from lira_jax.models.llm import LLM


def last_valid(x: jax.Array, valid: jax.Array) -> jax.Array:
  """x f32[B, T, ...] at each sample's last valid position -> f32[B, ...]."""
  index = valid.shape[1] - 1 - jnp.argmax(valid[:, ::-1], axis=1)
  return jnp.take_along_axis(x, index[:, None, *([None] * (x.ndim - 2))], axis=1)[:, 0]


@functools.partial(nnx.jit, static_argnames=('max_new_tokens',))
def greedy_decode(llm: LLM, embeds: jax.Array, valid: jax.Array, *, max_new_tokens: int,
                  eos_id: int | jax.Array = -1):
  """Prefill the prompt, then extend one token at a time inside a lax.while_loop.

  embeds f32[B, T, D], valid bool[B, T] (padding anywhere) -> (tokens i32[B, N], done bool[B]).
  A sample that emitted `eos_id` keeps emitting it (its later steps are padding for the cache).
  """
  b, t, _ = embeds.shape
  cache = llm.init_cache(b, t + max_new_tokens, embeds.dtype)
  logits, _, cache = llm.prefill(embeds, valid, cache)
  first = jnp.argmax(last_valid(logits, valid), -1).astype(jnp.int32)
  tokens = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(first)

  def cond(state):
    step, _, _, done = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(state):
    step, tokens, cache, done = state
    prev = tokens[:, step - 1]
    logits, _, cache = llm.extend(llm.embed_tokens(prev[:, None]), ~done[:, None], cache)
    nxt = jnp.where(done, prev, jnp.argmax(logits[:, 0], -1).astype(jnp.int32))
    return step + 1, tokens.at[:, step].set(nxt), cache, done | (nxt == eos_id)

  state = (jnp.int32(1), tokens, cache, first == eos_id)
  _, tokens, _, done = jax.lax.while_loop(cond, body, state)
  return tokens, done
