"""OMG-Seg masked-attention transformer decoder with its heads, and the [SEG] query path.

mmdet `Mask2FormerTransformerDecoder` as driven by OMG-Seg's `Mask2FormerVideoSemSamHead`: layer
j attends to pixel-decoder level j % num_levels (memory + level embedding, keys offset by the
single-frame `SinePositionalEncoding3D`). Before layer 0 and after every layer the head predicts
mask logits (and, in the panoptic pass, sphere-classifier and IoU logits); those mask logits,
resized to the next layer's level, decide which keys each query may see.

The key length differs per level, so the layers cannot share one scan body: they are unrolled in
Python over parameters stacked on a 'layers' axis (9 layers in OMG-Seg).

Einsum legend: B images, N [SEG] queries, Q queries per batch element, C channels, h/w rows and
columns of the stride-4 mask features, D prototype dim, k classes (+ background), P prototypes.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

import lira_jax  # noqa: F401  (disables eager sharding)
from lira_jax.models.pixel_decoder import FFN
from lira_jax.nn.attention import gqa_attention
from lira_jax.nn.layers import Axes, LayerNorm, Linear, stacked
from lira_jax.nn.position import sine_position_3d_single_frame
from lira_jax.nn.resize import resize_bilinear

_LN_EPS = 1e-5  # torch nn.LayerNorm default; every norm of the head uses it
_NORM_EPS = 1e-12  # F.normalize


class ReluMLP(nnx.Module):
  """Linear layers with ReLU between them (torch Sequential keys .0 .2 .4 -> layers.0 .1 .2)."""

  def __init__(self, dims: Sequence[int], axes: Sequence[Axes], *, dtype, param_dtype,
               rngs: nnx.Rngs):
    self.layers = nnx.List([
        Linear(i, o, axes=a, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        for i, o, a in zip(dims[:-1], dims[1:], axes)])

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, layer in enumerate(self.layers):
      x = layer(jax.nn.relu(x) if i else x)
    return x


def _head_mlp(dims: Sequence[int], out_axis: str | None, **kw) -> ReluMLP:
  """C -> C -> C -> out; alternating logical names so no kernel repeats one."""
  axes = [('seg_embed', 'seg_mlp'), ('seg_mlp', 'seg_embed'), ('seg_embed', out_axis)]
  return ReluMLP(dims, axes, **kw)


class MultiheadAttention(nnx.Module):
  """torch nn.MultiheadAttention without dropout; in_proj rows [W_q; W_k; W_v] become three
  Linears."""

  def __init__(self, dim: int, num_heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    lin = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.q_proj = Linear(dim, dim, axes=('seg_embed', 'seg_heads'), **lin)
    self.k_proj = Linear(dim, dim, axes=('seg_embed', 'seg_heads'), **lin)
    self.v_proj = Linear(dim, dim, axes=('seg_embed', 'seg_heads'), **lin)
    self.out_proj = Linear(dim, dim, axes=('seg_heads', 'seg_embed'), **lin)

  def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array, allowed: jax.Array,
               kv_index: jax.Array | None = None) -> jax.Array:
    """query [B, T, C], key/value [Bk, S, C], allowed bool[B, T, S] (True = may attend)
    -> [B, T, C]. kv_index i32[B]: the key/value batch element each query batch element reads
    (None: its own)."""
    b, t, c = query.shape

    def heads(x):
      return x.reshape(*x.shape[:2], self.num_heads, c // self.num_heads)

    q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
    if kv_index is None:
      out = gqa_attention(q, k, v, allowed)
    else:
      # Every query against every key set, then each keeps its own: keys are projected once per
      # image and never copied per query.
      bk = k.shape[0]
      q_all = jnp.broadcast_to(q.reshape(1, b * t, *q.shape[2:]), (bk, b * t, *q.shape[2:]))
      allowed_all = jnp.broadcast_to(allowed.reshape(1, b * t, -1),
                                     (bk, b * t, allowed.shape[-1]))
      out = gqa_attention(q_all, k, v, allowed_all).reshape(bk, b, t, *q.shape[2:])
      out = out[kv_index, jnp.arange(b)]
    return self.out_proj(out.reshape(b, t, c))


class DecoderLayer(nnx.Module):
  """Post-norm: masked cross-attention -> norms_0 -> self-attention -> norms_1 -> FFN (ReLU) ->
  norms_2, each sublayer residual (mmdet Mask2FormerTransformerDecoderLayer)."""

  def __init__(self, dim: int, num_heads: int, ffn_dim: int, *, dtype, param_dtype,
               rngs: nnx.Rngs):
    mods = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.cross_attn = MultiheadAttention(dim, num_heads, **mods)
    self.norms_0 = LayerNorm(dim, eps=_LN_EPS, axis_name='norm', param_dtype=param_dtype)
    self.self_attn = MultiheadAttention(dim, num_heads, **mods)
    self.norms_1 = LayerNorm(dim, eps=_LN_EPS, axis_name='norm', param_dtype=param_dtype)
    self.ffn = FFN(dim, ffn_dim, **mods)
    self.norms_2 = LayerNorm(dim, eps=_LN_EPS, axis_name='norm', param_dtype=param_dtype)

  def __call__(self, query: jax.Array, query_pos: jax.Array, key: jax.Array, key_pos: jax.Array,
               allowed: jax.Array, kv_index: jax.Array | None = None) -> jax.Array:
    """query/query_pos [B, Q, C]; key [Bk, S, C] (memory + level embedding), key_pos [S, C];
    allowed bool[B, Q, S] -> [B, Q, C]. Values are the keys without position."""
    x = self.norms_0(query + self.cross_attn(query + query_pos, key + key_pos, key, allowed,
                                             kv_index))
    qk = x + query_pos
    everyone = jnp.ones((x.shape[0], x.shape[1], x.shape[1]), bool)
    x = self.norms_1(x + self.self_attn(qk, qk, x, everyone))
    return self.norms_2(x + self.ffn(x))


@struct.dataclass
class DecoderOutputs:
  """Every prediction step (0 = before layer 0, j+1 = after layer j) and every layer's output.

  Panoptic pass / [SEG] path (`forward_seg`):
    mask_logits: f32[L+1, B, Q, h, w] / f32[L+1, N, h, w].
    class_logits: f32[L+1, B, Q, K+1] sphere-classifier logits (K classes, background last) /
      None.
    iou_logits: f32[L+1, B, Q] / None.
    queries: f32[L, B, Q, C] / f32[L, N, C] raw layer outputs (before post_norm).
    attn_masks: L arrays bool[B, Q, S_j] / bool[N, S_j] (S_j tokens of level j % num_levels): the
      cross-attention mask fed to layer j, True = blocked, fully blocked rows already opened.

  Under jit, whatever the caller drops (e.g. all but the last mask logits) is never materialised.
  """
  mask_logits: jax.Array
  class_logits: jax.Array | None
  iou_logits: jax.Array | None
  queries: jax.Array
  attn_masks: tuple[jax.Array, ...]


def attention_blocked(mask_logits: jax.Array, size: Sequence[int]) -> jax.Array:
  """mask_logits f32[..., h, w] -> bool[..., size[0]*size[1]]: sigmoid(bilinear resize) < 0.5,
  rows blocked everywhere opened again (a query must see something)."""
  resized = resize_bilinear(mask_logits.astype(jnp.float32), size)
  blocked = (jax.nn.sigmoid(resized) < 0.5).reshape(*mask_logits.shape[:-2], -1)
  return open_full_rows(blocked)


def open_full_rows(blocked: jax.Array) -> jax.Array:
  """bool[..., S] with every all-True row set to all-False."""
  return blocked & ~jnp.all(blocked, axis=-1, keepdims=True)


# Where each [SEG]-path copy starts from when a model is seeded from one that lacks it.
SEG_COPY_SOURCES = {'layers_llm': 'layers', 'post_norm_llm': 'post_norm',
                    'mask_embed_llm': 'mask_embed'}


def factored_class_prototypes(factors: Sequence[int], dim: int, protos: int) -> np.ndarray:
  """Class-name embeddings for classes that are a product of attributes (class k enumerates
  the factors row-major, e.g. colour x shape), standing in for the CLIP text embeddings of the
  OV file when nothing is pretrained: the unit-norm concatenation of one one-hot code per factor
  (classes sharing an attribute get cosine 1/len(factors)), the same for every prototype, and a
  zero background as the OV file has -> f32[D, K+1, P]."""
  if sum(factors) > dim:
    raise ValueError(f'class_factors {tuple(factors)} need ov_dim >= {sum(factors)}, have {dim}')
  codes = np.zeros((int(np.prod(factors)) + 1, dim), np.float32)
  for k, values in enumerate(np.ndindex(*factors)):
    codes[k, np.cumsum((0,) + tuple(factors[:-1])) + np.asarray(values)] = 1.0
  codes /= np.maximum(np.linalg.norm(codes, axis=-1, keepdims=True), 1.0)
  return np.repeat(codes.T[:, :, None], protos, axis=2)


class MaskedAttentionDecoder(nnx.Module):
  """OMG-Seg transformer decoder + mask / sphere-class / IoU heads; cfg = configs.omg_seg `head`.

  Parameter names mirror `panoptic_head.*`: layers.* (= transformer_decoder.layers.N.*, stacked),
  post_norm, mask_embed, query_feat, query_embed, level_embed, cls_proj, mask_pooling_norm /
  mask_pooling_proj (= mask_pooling_proj.0 / .1), iou_embed, cls_embed (the non-persistent buffer
  built from the OV file by convert/omg_seg.py; zeros until then, or `factored_class_prototypes`
  when cfg.class_factors is set), and the prompt parameters mask_tokens,
  pb_embedding, pos_linear that LIRA's inference never reads.
  """

  def __init__(self, cfg, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    c, nq = cfg.feat_channels, cfg.num_queries
    self.num_levels, self.num_layers, self.feat_channels = cfg.num_levels, cfg.dec_layers, c
    self.logit_scale = float(np.exp(np.float32(cfg.logit_scale_log)))
    self.dtype = dtype
    mods = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def table(rows, cols):
      return nnx.Param(jax.random.normal(rngs.params(), (rows, cols), param_dtype),
                       out_sharding=(None, 'seg_embed'))

    def mask_path():
      """(stacked layers, post_norm, mask_embed): what the panoptic and [SEG] passes run."""
      return (stacked(lambda r: DecoderLayer(c, cfg.dec_heads, cfg.dec_ffn, dtype=dtype,
                                             param_dtype=param_dtype, rngs=r), cfg.dec_layers, rngs),
              LayerNorm(c, eps=_LN_EPS, axis_name='norm', param_dtype=param_dtype),
              _head_mlp((c, c, c, c), 'seg_mlp', **mods))

    self.layers, self.post_norm, self.mask_embed = mask_path()
    # OMG-LLaVA's require_omg_decoder (`init_new_decoder`): the [SEG] path runs its own copy of
    # the layers, post_norm and mask_embed (seeded from the panoptic ones, see SEG_COPY_SOURCES)
    # so it can train while the panoptic pass stays frozen. Off in the released LIRA configs.
    if cfg.get('seg_decoder_copy'):
      self.layers_llm, self.post_norm_llm, self.mask_embed_llm = mask_path()
    else:
      self.layers_llm = self.post_norm_llm = self.mask_embed_llm = None
    self.query_feat = table(nq, c)
    self.query_embed = table(nq, c)
    self.level_embed = table(cfg.num_levels, c)
    self.mask_pooling_norm = LayerNorm(c, eps=_LN_EPS, axis_name='norm', param_dtype=param_dtype)
    self.mask_pooling_proj = Linear(c, c, axes=('seg_embed', 'seg_mlp'), **mods)
    self.cls_proj = _head_mlp((c, c, c, cfg.ov_dim), 'ov_embed', **mods)
    num_classes = cfg.num_things + cfg.num_stuff
    factors = cfg.get('class_factors')
    prototypes = (factored_class_prototypes(tuple(factors), cfg.ov_dim, cfg.ov_protos) if factors
                  else np.zeros((cfg.ov_dim, num_classes + 1, cfg.ov_protos), np.float32))
    if prototypes.shape[1] != num_classes + 1:
      raise ValueError(f'class_factors {factors} make {prototypes.shape[1] - 1} classes, the head '
                       f'has {num_classes}')
    self.cls_embed = nnx.Param(jnp.asarray(prototypes, param_dtype),
                               out_sharding=('ov_embed', None, None))
    self.iou_embed = _head_mlp((c, c, c, 1), None, **mods)
    self.mask_tokens = table(1, c)
    self.pb_embedding = table(2, c)
    self.pos_linear = Linear(2 * c, c, axes=('seg_mlp', 'seg_embed'), **mods)

  # ----------------------------------------------------------------------------------- heads
  def mask_logits(self, normed: jax.Array, mask_features: jax.Array,
                  kv_index: jax.Array | None = None, mask_embed: ReluMLP | None = None
                  ) -> jax.Array:
    """normed [B, Q, C] (post_norm output), mask_features [Bk, h, w, C] -> f32[B, Q, h, w]."""
    emb = (self.mask_embed if mask_embed is None else mask_embed)(normed)
    features = mask_features.astype(emb.dtype)
    if kv_index is None:
      return jnp.einsum('bqc,bhwc->bqhw', emb, features)
    # Against every image, keeping each query's own: no per-query copy of the feature map.
    every = jnp.einsum('nqc,bhwc->bnqhw', emb, features)
    return every[kv_index, jnp.arange(emb.shape[0])]

  def classify(self, normed: jax.Array, mask_logits: jax.Array, mask_features: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    """Sphere classifier and IoU head: normed [B, Q, C], mask_logits [B, Q, h, w],
    mask_features [B, h, w, C] -> (f32[B, Q, K+1], f32[B, Q])."""
    inside = (mask_logits > 0).astype(normed.dtype)
    weights = inside / (inside.sum((-2, -1), keepdims=True) + 1e-8)
    pooled = jnp.einsum('bqhw,bhwc->bqc', weights, mask_features.astype(normed.dtype))
    emb = self.cls_proj(self.mask_pooling_proj(self.mask_pooling_norm(pooled)) + normed)
    return self._sphere_logits(emb), self.iou_embed(normed)[..., 0].astype(jnp.float32)

  def _sphere_logits(self, emb: jax.Array) -> jax.Array:
    """cls_proj outputs [..., D] -> f32[..., K+1]: scaled cosine to the nearest prototype."""
    emb = emb.astype(jnp.float32)
    emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), _NORM_EPS)
    sims = jnp.einsum('...d,dkp->...kp', emb, self.cls_embed[...].astype(jnp.float32))
    return self.logit_scale * sims.max(-1)

  def query_class_logits(self, queries: jax.Array) -> jax.Array:
    """The sphere classifier on raw decoder queries [..., C] alone (no mask pooling) ->
    f32[..., K+1]: what a query by itself says of its class (the synthetic stage 0's
    query-class loss, lira_jax/train/objective.py)."""
    return self._sphere_logits(self.cls_proj(self.post_norm(queries)))

  # ---------------------------------------------------------------------------------- passes
  def _keys(self, memories: Sequence[jax.Array]):
    """memories: num_levels maps [Bk, h_l, w_l, C] (low -> high resolution) ->
    (keys [Bk, S_l, C] with level embedding, positions [S_l, C], sizes (h_l, w_l)) per level."""
    keys, positions, sizes = [], [], []
    for level, memory in enumerate(memories):
      bk, h, w, c = memory.shape
      keys.append(memory.astype(self.dtype).reshape(bk, h * w, c)
                  + self.level_embed[level].astype(self.dtype))
      pos = sine_position_3d_single_frame(h, w, c // 2).reshape(h * w, c)
      positions.append(jnp.asarray(pos, self.dtype))
      sizes.append((h, w))
    return keys, positions, sizes

  def _decode(self, query, query_pos, mask_features, memories, kv_index, seg_path, attn_masks):
    """Shared loop: query/query_pos [B', Q, C]; seg_path: the [SEG] path (no class heads, the
    `_llm` copy when there is one) rather than the panoptic pass; attn_masks None or L
    bool[B', Q, S_j] to feed."""
    if len(memories) != self.num_levels:
      raise ValueError(f'expected {self.num_levels} memory levels, got {len(memories)}')
    if attn_masks is not None and len(attn_masks) != self.num_layers:
      raise ValueError(f'expected {self.num_layers} teacher attention masks, got {len(attn_masks)}')
    keys, positions, sizes = self._keys(memories)
    if seg_path and self.layers_llm is not None:
      layers, post_norm, mask_embed = self.layers_llm, self.post_norm_llm, self.mask_embed_llm
    else:
      layers, post_norm, mask_embed = self.layers, self.post_norm, self.mask_embed
    graphdef, stacked_state = nnx.split(layers)
    masks, clss, ious, queries, fed = [], [], [], [], []

    def predict(q):
      normed = post_norm(q)
      logits = self.mask_logits(normed, mask_features, kv_index, mask_embed)
      masks.append(logits)
      if not seg_path:
        cls, iou = self.classify(normed, logits, mask_features)
        clss.append(cls)
        ious.append(iou)

    predict(query)
    for j in range(self.num_layers):
      level = j % self.num_levels
      if attn_masks is None:
        blocked = attention_blocked(masks[-1], sizes[level])
      else:
        blocked = open_full_rows(jnp.asarray(attn_masks[j], bool))
      fed.append(blocked)
      layer = nnx.merge(graphdef, jax.tree.map(lambda a, j=j: a[j], stacked_state))
      query = layer(query, query_pos, keys[level], positions[level], ~blocked, kv_index)
      queries.append(query)
      predict(query)
    return DecoderOutputs(
        mask_logits=jnp.stack(masks), class_logits=None if seg_path else jnp.stack(clss),
        iou_logits=None if seg_path else jnp.stack(ious), queries=jnp.stack(queries),
        attn_masks=tuple(fed))

  def __call__(self, mask_features: jax.Array, memories: Sequence[jax.Array], *,
               attn_masks: Sequence[jax.Array] | None = None) -> DecoderOutputs:
    """Panoptic pass with the learned queries.

    mask_features f32[B, h, w, C] (stride 4); memories: num_levels maps f32[B, h_l, w_l, C], low
    -> high resolution (the pixel decoder's multi_scale_memorys). attn_masks: optional L masks
    bool[B, Q, S_j] fed instead of the predicted ones (teacher forcing, for debugging).
    """
    b = mask_features.shape[0]
    query = jnp.broadcast_to(self.query_feat[...].astype(self.dtype), (b, *self.query_feat.shape))
    pos = jnp.broadcast_to(self.query_embed[...].astype(self.dtype), query.shape)
    return self._decode(query, pos, mask_features.astype(self.dtype), memories, None, False,
                        attn_masks)

  def forward_seg(self, seg_queries: jax.Array, image_index: jax.Array, seg_valid: jax.Array,
                  mask_features: jax.Array, memories: Sequence[jax.Array], *,
                  attn_masks: Sequence[jax.Array] | None = None) -> DecoderOutputs:
    """The [SEG] path (`forward_llm_seg`): each query decoded alone against its image.

    seg_queries f32[N, 2C] ([:C] content, [C:] position); image_index i32[N] (image of each
    query); seg_valid bool[N] (False = padding slot); mask_features / memories as in __call__
    for the B images. attn_masks: optional L masks bool[N, S_j] to feed (teacher forcing).
    Returns mask logits f32[L+1, N, h, w] etc. (see DecoderOutputs); padding slots are zeros.
    """
    c = self.feat_channels
    seg_queries = seg_queries.astype(self.dtype)
    kv_index = jnp.clip(image_index.astype(jnp.int32), 0, mask_features.shape[0] - 1)
    teacher = None if attn_masks is None else [jnp.asarray(m)[:, None] for m in attn_masks]
    out = self._decode(seg_queries[:, None, :c], seg_queries[:, None, c:],
                       mask_features.astype(self.dtype), memories, kv_index, True, teacher)

    def keep(x, n_axis):
      """Drops the single-query axis after the N axis and zeroes the padding slots."""
      x = jnp.squeeze(x, n_axis + 1)
      shape = [1] * x.ndim
      shape[n_axis] = -1
      return jnp.where(seg_valid.astype(bool).reshape(shape), x, jnp.zeros((), x.dtype))

    return DecoderOutputs(
        mask_logits=keep(out.mask_logits, 1), class_logits=None, iou_logits=None,
        queries=keep(out.queries, 1), attn_masks=tuple(keep(m, 0) for m in out.attn_masks))
