"""Decoder-only LLM covering InternLM2 and Qwen2 (pre-norm, GQA, SwiGLU, rotate-half RoPE).

The two families differ only in configuration: Qwen2 has q/k/v biases and (usually) ties the output
projection to the embedding table. InternLM2's fused grouped `wqkv` is split into wq/wk/wv by the
converter, so the module itself is Llama-shaped.

Dynamic NTK RoPE. The original InternLM2 module is stateful: the first forward whose total length
(padding included) exceeds max_position_embeddings rebuilds the rotary table with a scaled base and
keeps it for every later call. Here the base is a pure function of each sample's number of valid
tokens L, counting everything in the cache plus the tokens being added, computed inside jit. For a
single forward over an unpadded sequence both give the same result. During cached decoding the
keys already in the cache keep the rotation they were written with and only the new tokens use the
base for the current L — exactly what the original and transformers' "dynamic" rope do with a cache.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lira_jax.nn.attention import (KVCache, causal_mask, chunk_mask, gqa_attention,
                                   positions_from_valid, write_at)
from lira_jax.nn.layers import Embed, Linear, RMSNorm, scan_layers, stacked
from lira_jax.nn.rope import apply_rope, cos_sin, rope_base


class DecoderLayer(nnx.Module):
  """x + wo(attn(attention_norm(x))), then h + w2(silu(w1 n) * w3 n) with n = ffn_norm(h)."""

  def __init__(self, cfg, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, hd, f = cfg.hidden_size, cfg.head_dim, cfg.mlp_dim
    self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
    linear = functools.partial(Linear, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    norm = functools.partial(RMSNorm, d, eps=cfg.norm_eps, param_dtype=param_dtype)
    self.attention_norm = norm()
    self.wq = linear(d, cfg.num_heads * hd, axes=('embed', 'q_heads'), use_bias=cfg.qkv_bias)
    self.wk = linear(d, cfg.num_kv_heads * hd, axes=('embed', 'kv_heads'), use_bias=cfg.qkv_bias)
    self.wv = linear(d, cfg.num_kv_heads * hd, axes=('embed', 'kv_heads'), use_bias=cfg.qkv_bias)
    self.wo = linear(cfg.num_heads * hd, d, axes=('q_heads', 'embed'), use_bias=False)
    self.ffn_norm = norm()
    self.w1 = linear(d, f, axes=('embed', 'mlp'), use_bias=False)
    self.w3 = linear(d, f, axes=('embed', 'mlp'), use_bias=False)
    self.w2 = linear(f, d, axes=('mlp', 'embed'), use_bias=False)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array,
               kv: tuple[jax.Array, jax.Array, jax.Array] | None = None):
    """x f32[B, T, D]; cos/sin f32[B, T, H]; mask bool[B, T, S].

    kv: None (attend over the T new tokens, S = T) or (k_buf, v_buf f32[B, S, K, H], index i32[]
    or i32[B]): cached keys/values; the new ones are placed at `index` and the whole buffer is
    attended over.
    Returns (x f32[B, T, D], the new tokens' keys and values f32[B, T, K, H]).
    """
    b, t, _ = x.shape
    h = self.attention_norm(x)
    q = self.wq(h).reshape(b, t, self.num_heads, self.head_dim)
    k = self.wk(h).reshape(b, t, self.num_kv_heads, self.head_dim)
    v = self.wv(h).reshape(b, t, self.num_kv_heads, self.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    keys, values = k, v
    if kv is not None:
      k_buf, v_buf, index = kv
      keys, values = write_at(k_buf, k, index, axis=1), write_at(v_buf, v, index, axis=1)
    attn = gqa_attention(q, keys, values, mask)
    x = x + self.wo(attn.reshape(b, t, self.num_heads * self.head_dim))
    h = self.ffn_norm(x)
    return x + self.w2(jax.nn.silu(self.w1(h)) * self.w3(h)), k, v


class LLM(nnx.Module):
  """InternLM2 / Qwen2 decoder. Parameters: embed, layers (stacked), norm, lm_head (if untied)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, dtype=jnp.float32,
               param_dtype=jnp.float32, remat_policy: str | None = None, rngs: nnx.Rngs):
    # Frozen (hashable) so the module's graph definition can be a static jit argument.
    self.cfg = ml_collections.FrozenConfigDict(cfg)
    self.dtype, self.remat_policy = dtype, remat_policy
    self.embed = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, dtype=dtype,
                       param_dtype=param_dtype)
    self.layers = stacked(
        lambda r: DecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
        cfg.num_layers, rngs)
    self.norm = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps, param_dtype=param_dtype)
    self.lm_head = (None if cfg.tie_embeddings else
                    Linear(cfg.hidden_size, cfg.vocab_size, axes=('embed', 'vocab'),
                           use_bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype))

  def embed_tokens(self, ids: jax.Array) -> jax.Array:
    """ids i32[B, T] -> f32[B, T, D]."""
    return self.embed(ids)

  def lm_logits(self, hidden: jax.Array) -> jax.Array:
    """Final-normed hidden f32[B, T, D] -> float32 logits f32[B, T, V]."""
    logits = self.embed.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
    return logits.astype(jnp.float32)

  def init_cache(self, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An empty cache with room for `max_len` buffer slots per sample."""
    return KVCache.create(num_layers=self.cfg.num_layers, batch=batch, max_len=max_len,
                          num_kv_heads=self.cfg.num_kv_heads, head_dim=self.cfg.head_dim,
                          dtype=dtype)

  def _rope(self, positions: jax.Array, lengths: jax.Array):
    return cos_sin(positions, rope_base(self.cfg, lengths), self.cfg.head_dim)

  def _layers(self, x, cos, sin, mask, cache: KVCache | None = None, start=None):
    """Runs the stacked layers. Returns (final-normed hidden f32[B, T, D], per-layer outputs
    f32[L, B, T, D], the new tokens' keys and values f32[L, B, T, K, H]); unused outputs are
    pruned under jit. Only the new tokens leave the scan, so the cache is updated with one small
    write per call instead of a copy of every layer's buffer."""

    def body(layer, x, kv):
      x, k, v = layer(x, cos, sin, mask, None if kv is None else (*kv, start))
      return x, (x, k, v)

    x = x.astype(self.dtype)
    if isinstance(self.layers, nnx.List):  # unstacked for decoding (unstack_layers)
      outs = []
      for i, layer in enumerate(self.layers):
        x, out = body(layer, x, None if cache is None else (cache.k[i], cache.v[i]))
        outs.append(out)
      per_layer, ks, vs = (jnp.stack(o) for o in zip(*outs))
    else:
      xs = None if cache is None else (cache.k, cache.v)
      x, (per_layer, ks, vs) = scan_layers(self.layers, body, x, xs, self.remat_policy)
    return self.norm(x), per_layer, ks, vs

  def unstack_layers(self) -> None:
    """Replaces the stacked layers by a list of per-layer modules, in place (same values).

    For decoding: a token's step reads every weight once, and XLA:CPU reads a weight sliced out
    of a stack inside a scan about 2x slower than a separate array (a [12, 1024, 2816] stack:
    17 ms vs 7.7 ms per pass on the 2-core CPU). Training keeps the stack (one compiled layer).
    The per-layer variables keep their logical axes minus the stacked 'layers' axis."""
    if isinstance(self.layers, nnx.List):
      return
    graphdef, state = nnx.split(self.layers)
    layers = []
    for i in range(self.cfg.num_layers):
      layer = nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state))
      for _, var in nnx.iter_graph(layer):
        sharding = getattr(var, 'out_sharding', None) if isinstance(var, nnx.Variable) else None
        if sharding and sharding[0] == 'layers':
          var.set_metadata(out_sharding=tuple(sharding[1:]))
      layers.append(layer)
    self.layers = nnx.List(layers)

  def _forward(self, embeds: jax.Array, valid: jax.Array):
    """A fresh sequence (no cache): each token sees the valid tokens at or before it."""
    lengths = valid.sum(-1, dtype=jnp.int32)
    cos, sin = self._rope(positions_from_valid(valid), lengths)
    mask = causal_mask(jnp.arange(valid.shape[1], dtype=jnp.int32), valid)
    return (*self._layers(embeds, cos, sin, mask), lengths)

  def __call__(self, embeds: jax.Array, valid: jax.Array, *, return_hidden_states: bool = False):
    """embeds f32[B, T, D], valid bool[B, T] -> logits f32[B, T, V].

    With return_hidden_states: a dict with 'logits', 'hidden_states' (the output of every layer,
    before the final norm, f32[L, B, T, D]) and 'last_hidden' (after the final norm, f32[B, T, D]).
    """
    hidden, per_layer, _, _, _ = self._forward(embeds, valid)
    logits = self.lm_logits(hidden)
    if return_hidden_states:
      return {'logits': logits, 'hidden_states': per_layer, 'last_hidden': hidden}
    return logits

  def prefill(self, embeds: jax.Array, valid: jax.Array, cache: KVCache):
    """Starts a new sequence of T ≤ cache.max_len tokens in buffer slots [0, T).

    embeds f32[B, T, D], valid bool[B, T] -> (logits f32[B, T, V], final-normed hidden
    f32[B, T, D], cache). Whatever `cache` held before is discarded.
    """
    t = embeds.shape[1]
    if t > cache.max_len:
      raise ValueError(f'prefill of {t} tokens does not fit a cache of {cache.max_len}')
    hidden, _, ks, vs, lengths = self._forward(embeds, valid)
    cache = cache.replace(
        k=write_at(cache.k, ks, 0, axis=2), v=write_at(cache.v, vs, 0, axis=2),
        valid=write_at(jnp.zeros_like(cache.valid), valid, 0, axis=1),
        index=jnp.asarray(t, jnp.int32), next_pos=lengths)
    return self.lm_logits(hidden), hidden, cache

  def extend(self, embeds: jax.Array, valid: jax.Array, cache: KVCache,
             slots: jax.Array | None = None):
    """Appends C tokens (C = 1 for one decoding step) after everything valid in the cache.

    embeds f32[B, C, D], valid bool[B, C] -> (logits f32[B, C, V], final-normed hidden
    f32[B, C, D], cache). By default the tokens go to the shared write index, which advances by
    C; the caller keeps cache.index + C ≤ cache.max_len (a write past the end would be clamped
    by dynamic_update_slice and overwrite the last slots). slots i32[B]: per-sample buffer
    offsets instead (e.g. a reserved tail for ILVC region tokens; the write index stays). Donate
    the cache to the enclosing jit so that its buffers are updated in place.
    """
    c = embeds.shape[1]
    start = cache.index if slots is None else slots
    key_valid = write_at(cache.valid, valid, start, axis=1)
    lengths = cache.next_pos + valid.sum(-1, dtype=jnp.int32)
    cos, sin = self._rope(positions_from_valid(valid, cache.next_pos), lengths)
    mask = chunk_mask(cache.valid, key_valid, start, c)
    hidden, _, ks, vs = self._layers(embeds, cos, sin, mask, cache, start)
    cache = cache.replace(
        k=write_at(cache.k, ks, start, axis=2), v=write_at(cache.v, vs, start, axis=2),
        valid=key_valid, index=cache.index + (c if slots is None else 0), next_pos=lengths)
    return self.lm_logits(hidden), hidden, cache
