"""OMG-Seg / Mask2Former pixel decoder (mmdet `MSDeformAttnPixelDecoder`).

The `num_levels` lowest-resolution backbone maps are projected to C channels, flattened (lowest
resolution first) and refined jointly by a post-norm deformable-attention encoder; the remaining
higher-resolution maps are merged top-down FPN-style. Outputs the stride-4 `mask_features` and the
encoder outputs as `multi_scale_memorys` (low -> high resolution) for the transformer decoder.

All maps are channels-last (NHWC). Parameter names mirror the mmdet state-dict keys.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lira_jax  # noqa: F401  (disables eager sharding)
from lira_jax.nn.deform_attn import MSDeformAttn, SpatialShapes
from lira_jax.nn.group_norm import GroupNorm
from lira_jax.nn.layers import Conv, LayerNorm, Linear, scan_layers, stacked
from lira_jax.nn.position import sine_position_2d
from lira_jax.nn.resize import resize_bilinear

_LN_EPS = 1e-5  # torch nn.LayerNorm default, used by mmcv's encoder layers
_GN_EPS = 1e-5  # torch nn.GroupNorm default


class ConvGN(nnx.Module):
  """mmcv ConvModule: conv -> GroupNorm (-> ReLU); [B, H, W, C_in] -> [B, H, W, C_out]."""

  def __init__(self, in_features: int, out_features: int, kernel: int, *, use_bias: bool,
               relu: bool, gn_groups: int, dtype, param_dtype, rngs: nnx.Rngs):
    pad = kernel // 2
    self.relu = relu
    self.conv = Conv(in_features, out_features, (kernel, kernel), padding=((pad, pad), (pad, pad)),
                     use_bias=use_bias, axes=(None, None, 'conv_in', 'seg_embed'), rngs=rngs,
                     dtype=dtype, param_dtype=param_dtype)
    self.gn = GroupNorm(gn_groups, out_features, eps=_GN_EPS, param_dtype=param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.gn(self.conv(x))
    return jax.nn.relu(y) if self.relu else y


class FFN(nnx.Module):
  """mmcv FFN body fc2(relu(fc1(x))) (mmcv keys `layers.0.0` -> fc1, `layers.1` -> fc2)."""

  def __init__(self, dim: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    lin = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.fc1 = Linear(dim, hidden, axes=('seg_embed', 'seg_mlp'), **lin)
    self.fc2 = Linear(hidden, dim, axes=('seg_mlp', 'seg_embed'), **lin)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.relu(self.fc1(x)))


class DeformEncoderLayer(nnx.Module):
  """Post-norm: x = norms_0(x + attn(x + pos, x)); x = norms_1(x + ffn(x))."""

  def __init__(self, cfg_head, *, dtype, param_dtype, rngs: nnx.Rngs):
    c = cfg_head.feat_channels
    self.self_attn = MSDeformAttn(c, num_heads=cfg_head.enc_heads, num_levels=cfg_head.num_levels,
                                  num_points=cfg_head.enc_points, dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs)
    self.norms_0 = LayerNorm(c, eps=_LN_EPS, axis_name='norm', param_dtype=param_dtype)
    self.ffn = FFN(c, cfg_head.enc_ffn, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norms_1 = LayerNorm(c, eps=_LN_EPS, axis_name='norm', param_dtype=param_dtype)

  def __call__(self, x: jax.Array, pos: jax.Array, reference_points: jax.Array,
               spatial_shapes: SpatialShapes) -> jax.Array:
    """x [B, S, C], pos [S, C], reference_points f32[1, S, L, 2] -> [B, S, C]."""
    x = self.norms_0(x + self.self_attn(x + pos, x, reference_points, spatial_shapes))
    return self.norms_1(x + self.ffn(x))


class DeformEncoder(nnx.Module):
  """`encoder.layers`: enc_layers DeformEncoderLayers stacked on a leading 'layers' axis."""

  def __init__(self, cfg_head, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.layers = stacked(
        lambda r: DeformEncoderLayer(cfg_head, dtype=dtype, param_dtype=param_dtype, rngs=r),
        cfg_head.enc_layers, rngs)

  def __call__(self, x: jax.Array, pos: jax.Array, reference_points: jax.Array,
               spatial_shapes: SpatialShapes) -> jax.Array:
    def body(layer, h, _):
      return layer(h, pos, reference_points, spatial_shapes), None

    return scan_layers(self.layers, body, x)[0]


def _reference_points(spatial_shapes: SpatialShapes, num_levels: int) -> np.ndarray:
  """f32[1, S, L, 2]: pixel centres ((x+0.5)/W, (y+0.5)/H) of every flattened position, the same
  for every level (no padding, so mmdet's valid ratios are all 1)."""
  points = []
  for h, w in spatial_shapes:
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                         indexing='ij')
    points.append(np.stack([(xs.ravel() + 0.5) / w, (ys.ravel() + 0.5) / h], -1))
  points = np.concatenate(points).astype(np.float32)
  return np.broadcast_to(points[None, :, None], (1, len(points), num_levels, 2))


class MSDeformAttnPixelDecoder(nnx.Module):
  """mmdet MSDeformAttnPixelDecoder; cfg_head = configs.omg_seg `head` (in_channels, strides,
  feat_channels, num_levels, gn_groups, enc_layers, enc_heads, enc_points, enc_ffn).

  input_convs[k] projects backbone level n_in-1-k (k < num_levels); lateral_convs[j] /
  output_convs[j] handle level n_in-num_levels-1-j (one level, stride 4, in OMG-Seg).
  """

  def __init__(self, cfg_head, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    c, n_in, n_enc = cfg_head.feat_channels, len(cfg_head.in_channels), cfg_head.num_levels
    if c % 2:
      raise ValueError(f'feat_channels {c} must be even for the sine positional encoding')
    self.feat_channels, self.num_levels, self.dtype = c, n_enc, dtype
    conv = dict(gn_groups=cfg_head.gn_groups, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.input_convs = nnx.List([
        ConvGN(cfg_head.in_channels[n_in - 1 - k], c, 1, use_bias=True, relu=False, **conv)
        for k in range(n_enc)])
    self.encoder = DeformEncoder(cfg_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.level_encoding = nnx.Param(
        jax.random.normal(rngs.params(), (n_enc, c), param_dtype), out_sharding=(None, 'seg_embed'))
    fpn_levels = range(n_in - n_enc - 1, -1, -1)
    self.lateral_convs = nnx.List([
        ConvGN(cfg_head.in_channels[i], c, 1, use_bias=False, relu=False, **conv)
        for i in fpn_levels])
    self.output_convs = nnx.List([
        ConvGN(c, c, 3, use_bias=False, relu=True, **conv) for _ in fpn_levels])
    self.mask_feature = Conv(c, c, (1, 1), axes=(None, None, 'conv_in', 'seg_embed'), rngs=rngs,
                             dtype=dtype, param_dtype=param_dtype)

  def __call__(self, feats: list[jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
    """feats: backbone maps f32[B, H_i, W_i, C_i], highest resolution (stride 4) first.

    Returns (mask_features [B, H_0, W_0, C], multi_scale_memorys: num_levels maps [B, h, w, C]
    from the lowest resolution up).
    """
    n_in, c = len(feats), self.feat_channels
    projected = [self.input_convs[k](feats[n_in - 1 - k]) for k in range(self.num_levels)]
    b = projected[0].shape[0]
    spatial_shapes = tuple((p.shape[1], p.shape[2]) for p in projected)
    pos = jnp.concatenate([
        jnp.asarray(sine_position_2d(h, w, c // 2).reshape(h * w, c))
        + self.level_encoding[k].astype(jnp.float32)
        for k, (h, w) in enumerate(spatial_shapes)]).astype(self.dtype)
    x = jnp.concatenate([p.reshape(b, -1, c) for p in projected], axis=1)
    x = self.encoder(x, pos, jnp.asarray(_reference_points(spatial_shapes, self.num_levels)),
                     spatial_shapes)

    starts = np.cumsum([0] + [h * w for h, w in spatial_shapes])
    outs = [x[:, starts[k]:starts[k + 1]].reshape(b, h, w, c)
            for k, (h, w) in enumerate(spatial_shapes)]
    for j, i in enumerate(range(n_in - self.num_levels - 1, -1, -1)):
      lateral = self.lateral_convs[j](feats[i])
      y = lateral + resize_bilinear(outs[-1], lateral.shape[1:3], axes=(1, 2))
      outs.append(self.output_convs[j](y))
    return self.mask_feature(outs[-1]), outs[:self.num_levels]
