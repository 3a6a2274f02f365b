"""KV-cache decoding compiled end to end: one prefill, then one `extend` per token inside a
lax.while_loop, with token choice and stop checks on device (no host sync per token).

A `hook` lets a caller act on every fed token inside the loop (LIRA collects [SEG] hidden states
and appends ILVC region tokens to the cache there, lira_jax.infer.lira_generate); with no hook
this is plain LLM decoding.

Axis letters: B batch, T prompt buffer length, D hidden, V vocabulary, N new tokens.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lira_jax.models.llm import LLM
from lira_jax.nn.attention import KVCache


@dataclasses.dataclass(frozen=True)
class Sampling:
  """temperature 0 is greedy (top_k / top_p ignored); top_k 0 and top_p 1 switch those off."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
      raise ValueError(f'bad sampling settings {self}')


def last_valid(x: jax.Array, valid: jax.Array) -> jax.Array:
  """x f32[B, T, ...] at each sample's last valid position -> f32[B, ...]."""
  index = valid.shape[1] - 1 - jnp.argmax(valid[:, ::-1], axis=1)
  return jnp.take_along_axis(x, index[:, None, *([None] * (x.ndim - 2))], axis=1)[:, 0]


def filter_logits(logits: jax.Array, sampling: Sampling) -> jax.Array:
  """f32[B, V] / temperature with everything outside top-k and the top-p nucleus at -inf. The
  nucleus keeps the smallest prefix of the sorted distribution whose mass reaches top_p (the
  token that crosses it included), as transformers' TopPLogitsWarper does."""
  x = logits.astype(jnp.float32) / sampling.temperature
  if sampling.top_k:
    kth = jax.lax.top_k(x, min(sampling.top_k, x.shape[-1]))[0][:, -1:]
    x = jnp.where(x < kth, -jnp.inf, x)
  if sampling.top_p < 1.0:
    ordered = jnp.sort(x, axis=-1)[:, ::-1]
    before = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1) - jax.nn.softmax(ordered, -1)
    kept = jnp.sum(before < sampling.top_p, axis=-1, keepdims=True)  # >= 1
    cutoff = jnp.take_along_axis(ordered, kept - 1, axis=-1)
    x = jnp.where(x < cutoff, -jnp.inf, x)
  return x


def choose_tokens(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
  """f32[B, V] -> i32[B]: argmax when greedy, else a draw from the filtered distribution."""
  if sampling.temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filter_logits(logits, sampling), axis=-1).astype(jnp.int32)


# hook(extra, fed i32[B], logits f32[B, V], hidden f32[B, D], active bool[B], cache)
#   -> (extra, logits f32[B, V], cache): sees each fed token with the logits / final-normed hidden
#   it produced; may extend the cache and return the logits that follow what it appended.
Hook = Callable[[Any, jax.Array, jax.Array, jax.Array, jax.Array, KVCache],
                tuple[Any, jax.Array, KVCache]]


class Decoded(NamedTuple):
  tokens: jax.Array  # i32[B, N]; pad_id after a sample's stop token
  lengths: jax.Array  # i32[B] tokens generated, the stop token included
  finished: jax.Array  # bool[B] the sample emitted a stop token
  extra: Any  # the hook's carry


def decode(llm: LLM, embeds: jax.Array, valid: jax.Array, *, max_new_tokens: int,
           stop_ids: Sequence[int] = (), sampling: Sampling = Sampling(),
           key: jax.Array | None = None, pad_id: int = 0, cache_extra: int = 0,
           hook: Hook | None = None, extra: Any = None,
           sample_stop: jax.Array | None = None, suppress_ids: Sequence[int] = ()) -> Decoded:
  """Prefill embeds f32[B, T, D] / valid bool[B, T] (padding anywhere: prompts of different
  lengths), then generate up to max_new_tokens per sample; the loop ends when every sample has
  stopped. Traceable: call it inside jit (`generate_tokens` is the jitted LLM-only form).
  cache_extra: cache slots beyond T + N that the hook may append. The hook sees every token
  that is fed back, i.e. all but a sample's last (its stop token, or the N-th when cut off).
  sample_stop i32[B]: one more stop id per sample (-1: none), a runtime value. suppress_ids:
  ids never generated (rows of the embedding that are no token of the tokenizer)."""
  b = embeds.shape[0]
  key = jax.random.key(0) if key is None else key
  stops = jnp.asarray(list(stop_ids) or [-1], jnp.int32)
  own = jnp.full((b,), -1, jnp.int32) if sample_stop is None else sample_stop.astype(jnp.int32)
  is_stop = lambda t: jnp.isin(t, stops) | (t == own.reshape(-1, *[1] * (t.ndim - 1)))
  cache = llm.init_cache(b, embeds.shape[1] + max_new_tokens + cache_extra, embeds.dtype)
  logits, _, cache = llm.prefill(embeds, valid, cache)
  banned = jnp.zeros((llm.cfg.vocab_size,), bool).at[jnp.asarray(list(suppress_ids), jnp.int32)
                                                      ].set(True)
  allowed = lambda x: jnp.where(banned, -jnp.inf, x)
  key, sub = jax.random.split(key)
  first = choose_tokens(allowed(last_valid(logits, valid)), sub, sampling)
  tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)

  def cond(state):
    step, _, _, done, _, _ = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(state):
    step, tokens, cache, done, key, extra = state
    fed = tokens[:, step - 1]
    logits, hidden, cache = llm.extend(llm.embed_tokens(fed[:, None]), ~done[:, None], cache)
    logits, hidden = logits[:, 0], hidden[:, 0]
    if hook is not None:
      extra, logits, cache = hook(extra, fed, logits, hidden, ~done, cache)
    key, sub = jax.random.split(key)
    nxt = jnp.where(done, pad_id, choose_tokens(allowed(logits), sub, sampling))
    return (step + 1, tokens.at[:, step].set(nxt), cache, done | is_stop(nxt), key,
            extra)

  done = is_stop(first)
  _, tokens, _, done, _, extra = jax.lax.while_loop(
      cond, body, (jnp.int32(1), tokens, cache, done, key, extra))
  stopped = is_stop(tokens)
  lengths = jnp.where(done, jnp.argmax(stopped, axis=1) + 1, max_new_tokens)
  return Decoded(tokens, lengths.astype(jnp.int32), done, extra)


@functools.partial(nnx.jit, static_argnames=('max_new_tokens', 'stop_ids', 'sampling'))
def generate_tokens(llm: LLM, embeds: jax.Array, valid: jax.Array, key: jax.Array, *,
                    max_new_tokens: int, stop_ids: tuple[int, ...] = (),
                    sampling: Sampling = Sampling()) -> Decoded:
  """The jitted LLM-only `decode` (no hook)."""
  return decode(llm, embeds, valid, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                sampling=sampling, key=key)
