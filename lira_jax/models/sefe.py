"""SEFE: LIRA's visual projector with the pre-LLM cross attention (`ProjectorModel_OMG_LLaVA` /
`Naive_Proj` with `cross_beforellm`; lira_reference.md §4), batched with static shapes.

What the released code builds for one image (a Python loop over images there):
  q = model(query_proj(query_feat))[valid]   the valid object queries, ascending query index
  p = model_feat(clip_feature)               the G pixel (CLIP) tokens
  x <- x + MHA(norm1(x), norm2(s), norm2(s))  for x = p and x = q separately (add_cross), where
                                              s = all InternVL tokens of the image (every tile)
  stage 2:                       [s, sep_internvl, p, sep, q]
  stage 1 (onlyomg_pretrain):    [sep_internvl, p, sep, q]

Static-shape form used here:
  * q is computed for V query slots: the valid queries in ascending order, then invalid ones
    (V >= min(Q, G) never drops a valid query: a valid query owns at least one of the G cells).
  * p and q go through the cross attention as one query set of G + V rows. Rows never attend to
    each other, so this equals the two separate calls; invalid InternVL slots (padded tiles) are
    excluded by a key-padding mask.
  * The output keeps every slot in a fixed position (`VisualTokens`): S InternVL slots, 1, G, 1,
    V query slots, with a validity mask; invalid slots hold zeros. The valid tokens, read in slot
    order, are exactly the released sequence. Fixed slots rather than a compacted block because
    the projector then moves no data (gradients flow straight through), while the sequence packer
    must gather anyway to interleave text and images and can place the valid tokens in that same
    gather (destination = offset + cumsum(valid) - 1). `VisualTokens.compact()` gives the
    contiguous form for consumers that want it.

Axis letters: B images, G pixel tokens (prior grid cells), Q object queries, V query slots,
S InternVL token slots (max tiles x tokens per tile), L visual-token slots, H LLM hidden.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx, struct

import lira_jax  # noqa: F401  (disables eager sharding)
from lira_jax.nn.attention import gqa_attention
from lira_jax.nn.layers import Axes, LayerNorm, Linear, gelu_exact

_LN_EPS = 1e-5  # torch nn.LayerNorm default (norm1, norm2)
VARIANTS = ('released', 'paper')


class GeluMLP(nnx.Module):
  """torch Sequential(Linear, GELU, Linear, ...) (exact GELU, bias everywhere): the Linear at
  Sequential index k is the attribute `fc{k}` (fc0, fc2, ...), mirroring the released keys."""

  def __init__(self, dims: Sequence[int], axes: Sequence[Axes], *, dtype, param_dtype,
               rngs: nnx.Rngs):
    self.num_linears = len(dims) - 1
    for j, (d_in, d_out, ax) in enumerate(zip(dims[:-1], dims[1:], axes)):
      setattr(self, f'fc{2 * j}', Linear(d_in, d_out, axes=ax, rngs=rngs, dtype=dtype,
                                         param_dtype=param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.num_linears):
      x = getattr(self, f'fc{2 * j}')(gelu_exact(x) if j else x)
    return x


def _projector_axes(depth: int) -> list[Axes]:
  """in -> H, then H -> H layers; alternating names so no kernel repeats a mesh axis."""
  return [('proj_in', 'mlp')] + [('mlp', 'embed') if j % 2 else ('embed', 'mlp')
                                 for j in range(1, depth)]


class CrossAttention(nnx.Module):
  """`CrossAttentionLayer_Pre`: torch nn.MultiheadAttention (in_proj rows [W_q; W_k; W_v] become
  q/k/v_proj) with LayerNorm `norm1` on the attending side and `norm2` on the attended side, a
  residual, no FFN, no output norm, dropout 0."""

  def __init__(self, dim: int, num_heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f'hidden size {dim} is not divisible by {num_heads} heads')
    self.num_heads = num_heads
    norm = dict(eps=_LN_EPS, axis_name='norm', param_dtype=param_dtype)
    self.norm1 = LayerNorm(dim, **norm)
    self.norm2 = LayerNorm(dim, **norm)
    lin = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    # The original Xavier-initialises the fused in_proj (3H, H): bound sqrt(6 / 4H) per part.
    fused_xavier = jax.nn.initializers.variance_scaling(0.5, 'fan_avg', 'uniform')
    self.q_proj = Linear(dim, dim, axes=('embed', 'q_heads'), kernel_init=fused_xavier, **lin)
    self.k_proj = Linear(dim, dim, axes=('embed', 'q_heads'), kernel_init=fused_xavier, **lin)
    self.v_proj = Linear(dim, dim, axes=('embed', 'q_heads'), kernel_init=fused_xavier, **lin)
    self.out_proj = Linear(dim, dim, axes=('q_heads', 'embed'),
                           kernel_init=jax.nn.initializers.xavier_uniform(), **lin)

  def _attend(self, query: jax.Array, memory: jax.Array, memory_valid: jax.Array) -> jax.Array:
    """MHA(query, memory, memory): query [B, T, H], memory [B, S, H], memory_valid bool[B, S]."""
    def heads(x):
      return x.reshape(*x.shape[:2], self.num_heads, x.shape[-1] // self.num_heads)

    allowed = jnp.broadcast_to(memory_valid[:, None, :],
                               (query.shape[0], query.shape[1], memory.shape[1]))
    out = gqa_attention(heads(self.q_proj(query)), heads(self.k_proj(memory)),
                        heads(self.v_proj(memory)), allowed)
    return self.out_proj(out.reshape(query.shape))

  def __call__(self, x: jax.Array, memory: jax.Array, memory_valid: jax.Array) -> jax.Array:
    """Released SEFE: x [B, T, H] (pixel side) + MHA(norm1(x), norm2(memory)) over the valid
    memory slots (memory [B, S, H] InternVL tokens, memory_valid bool[B, S])."""
    return x + self._attend(self.norm1(x), self.norm2(memory), memory_valid)

  def enhance_memory(self, memory: jax.Array, x: jax.Array, x_valid: jax.Array) -> jax.Array:
    """'paper' variant (see SEFE): memory [B, S, H] + MHA(norm2(memory), norm1(x)) over the valid
    pixel-side rows x [B, T, H] (x_valid bool[B, T])."""
    return memory + self._attend(self.norm2(memory), self.norm1(x), x_valid)


@struct.dataclass
class VisualTokens:
  """One image's visual-token block per batch element in fixed slots.

  tokens f32[B, L, H] (zeros at invalid slots), valid bool[B, L]. Slot layout (static):
  stage 2: [S InternVL slots, sep_internvl, G pixel tokens, sep, V query slots];
  stage 1: [sep_internvl, G pixel tokens, sep, V query slots].
  """
  tokens: jax.Array
  valid: jax.Array

  def compact(self) -> 'VisualTokens':
    """The valid tokens moved to the front in their order (count = valid.sum(-1)), then zeros."""
    order = jnp.argsort(~self.valid, axis=1, stable=True)
    valid = jnp.take_along_axis(self.valid, order, axis=1)
    tokens = jnp.take_along_axis(self.tokens, order[..., None], axis=1)
    return VisualTokens(tokens=jnp.where(valid[..., None], tokens, jnp.zeros((), tokens.dtype)),
                        valid=valid)


def valid_query_slots(query_valid: jax.Array, num_slots: int) -> tuple[jax.Array, jax.Array]:
  """query_valid bool[B, Q] -> (index i32[B, V], slot_valid bool[B, V]): the valid queries in
  ascending index order first, then the invalid ones (V = num_slots)."""
  index = jnp.argsort(~query_valid, axis=-1, stable=True)[:, :num_slots].astype(jnp.int32)
  return index, jnp.take_along_axis(query_valid, index, axis=1)


class SEFE(nnx.Module):
  """The visual projector + SEFE. cfg: the `sefe` section (query_channels, clip_feat_channel,
  pixel_shuffle_ratio, projector_depth, cross_heads, add_cross, onlyomg_pretrain, variant);
  hidden_size: the LLM's H.

  variant 'released' (default) is the code above. 'paper' is the alternative reading of the
  paper's equation recorded in lira_reference.md §14 (unverified against the paper text): the
  residual goes to the semantic side, s <- s + MHA(norm2(s), norm1([p; q])), and p, q enter the
  LLM unfused. It uses the same parameters, so released checkpoints load into either.
  """

  def __init__(self, cfg, hidden_size: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if cfg.variant not in VARIANTS:
      raise ValueError(f'sefe.variant {cfg.variant!r} not in {VARIANTS}')
    self.variant, self.onlyomg_pretrain = cfg.variant, bool(cfg.onlyomg_pretrain)
    self.dtype = dtype
    query_width = 2 * cfg.query_channels  # [decoder query ‖ query_embed]
    feat = cfg.clip_feat_channel * cfg.pixel_shuffle_ratio ** 2
    depth = cfg.projector_depth
    mods = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query_proj = Linear(query_width, feat, axes=(None, 'proj_in'), **mods)
    hidden = [hidden_size] * depth
    self.model = GeluMLP([feat] + hidden, _projector_axes(depth), **mods)
    self.model_feat = GeluMLP([feat + query_width] + hidden, _projector_axes(depth), **mods)
    table = jax.nn.initializers.normal(1.0)  # torch nn.Embedding(1, H)
    self.seperate_embed = nnx.Param(table(rngs.params(), (1, hidden_size), param_dtype),
                                    out_sharding=(None, 'embed'))
    self.seperate_embed_internvl = nnx.Param(table(rngs.params(), (1, hidden_size), param_dtype),
                                             out_sharding=(None, 'embed'))
    self.cross_beforellm = (CrossAttention(hidden_size, cfg.cross_heads, **mods)
                            if cfg.add_cross else None)

  def query_tokens(self, query_feat: jax.Array) -> jax.Array:
    """model(query_proj(.)) (no activation in between): f32[..., 2C] -> f32[..., H]."""
    return self.model(self.query_proj(query_feat))

  def clip_tokens(self, clip_feature: jax.Array) -> jax.Array:
    """model_feat: f32[..., r*r*C_clip + 2C] -> f32[..., H]."""
    return self.model_feat(clip_feature)

  def _separator(self, table: nnx.Param, batch: int) -> jax.Array:
    return jnp.broadcast_to(table[...].astype(self.dtype), (batch, *table.shape))

  def __call__(self, clip_feature: jax.Array, query_feat: jax.Array, query_valid: jax.Array,
               internvl_tokens: jax.Array | None = None, internvl_valid: jax.Array | None = None,
               *, max_queries: int | None = None) -> VisualTokens:
    """The visual-token block of each image.

    clip_feature f32[B, G, r*r*C_clip + 2C] (CLIP tokens ‖ pixel_query); query_feat f32[B, Q, 2C];
    query_valid bool[B, Q] (= ~attention_mask.all(-1), the query owns a cell); internvl_tokens
    f32[B, S, H] (the image's tiles, tile-major, padded to max tiles) with internvl_valid
    bool[B, S] (default all valid), or None (no InternVL tokens: no fusion, none emitted, the
    released `internvl_vit_embeds=None` path). max_queries: V, default min(Q, G).
    """
    b, g = clip_feature.shape[:2]
    v = min(query_feat.shape[1], g) if max_queries is None else max_queries
    index, q_valid = valid_query_slots(query_valid.astype(bool), v)
    q = self.query_tokens(jnp.take_along_axis(query_feat, index[..., None], axis=1))
    p = self.clip_tokens(clip_feature)

    def ones(n):
      return jnp.ones((b, n), bool)

    parts = []
    if internvl_tokens is not None:
      s = internvl_tokens.astype(self.dtype)
      s_valid = ones(s.shape[1]) if internvl_valid is None else internvl_valid.astype(bool)
      if self.cross_beforellm is not None:
        pixel_side = jnp.concatenate([p, q], axis=1)
        if self.variant == 'paper':
          s = self.cross_beforellm.enhance_memory(
              s, pixel_side, jnp.concatenate([ones(g), q_valid], axis=1))
        else:
          pixel_side = self.cross_beforellm(pixel_side, s, s_valid)
          p, q = pixel_side[:, :g], pixel_side[:, g:]
      if not self.onlyomg_pretrain:
        parts.append((s, s_valid))
    parts += [(self._separator(self.seperate_embed_internvl, b), ones(1)), (p, ones(g)),
              (self._separator(self.seperate_embed, b), ones(1)), (q, q_valid)]
    tokens = jnp.concatenate([x.astype(self.dtype) for x, _ in parts], axis=1)
    valid = jnp.concatenate([m for _, m in parts], axis=1)
    return VisualTokens(tokens=jnp.where(valid[..., None], tokens, jnp.zeros((), tokens.dtype)),
                        valid=valid)
