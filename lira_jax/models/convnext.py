"""Pixel encoder: the ConvNeXt trunk of open_clip `convnext_large_d_320` (timm layout), NHWC.

stem: Conv 4x4/4 -> LayerNorm2d; stage i (i > 0) starts with LayerNorm2d -> Conv 2x2/2; every block
is x + gamma * fc2(gelu(fc1(LN(dwconv7x7(x))))). LayerNorm2d of the original is a LayerNorm over
channels, which is the last axis here. Blocks of a stage are stacked and run with lax.scan so the
27-block stage compiles once. Frozen in LIRA and run in float32 (lira_reference.md §3.1-3.2).

Parameter names mirror the timm/open_clip keys (`stem.{0,1}` -> stem_conv/stem_norm,
`stages.{i}.downsample.{0,1}` -> stages[i].downsample_norm/downsample_conv,
`stages.{i}.blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}` -> stages[i].blocks.* stacked on j).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import lira_jax  # noqa: F401  (disables eager sharding)
from lira_jax.nn.layers import Conv, LayerNorm, Linear, gelu_exact, scan_layers, stacked

# The channel stream stays replicated ('conv_in'); only the 4x MLP hidden width and the
# downsampling conv outputs are split ('conv_out'), Megatron-style.
_CHANNELS = 'conv_in'
_HIDDEN = 'conv_out'


class ConvNeXtBlock(nnx.Module):
  """f32[B, H, W, C] -> same: x + gamma * fc2(gelu(fc1(norm(conv_dw(x)))))."""

  def __init__(self, dim: int, *, kernel_size: int, eps: float, dtype, param_dtype,
               rngs: nnx.Rngs):
    self.dtype = dtype
    mods = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    pad = kernel_size // 2
    self.conv_dw = Conv(dim, dim, (kernel_size, kernel_size), padding=((pad, pad), (pad, pad)),
                        groups=dim, axes=(None, None, None, _CHANNELS), **mods)
    self.norm = LayerNorm(dim, eps=eps, axis_name='norm', param_dtype=param_dtype)
    self.fc1 = Linear(dim, 4 * dim, axes=(_CHANNELS, _HIDDEN), **mods)
    self.fc2 = Linear(4 * dim, dim, axes=(_HIDDEN, _CHANNELS), **mods)
    self.gamma = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=('norm',))

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.fc2(gelu_exact(self.fc1(self.norm(self.conv_dw(x)))))
    return x + self.gamma[...].astype(self.dtype) * h


class ConvNeXtStage(nnx.Module):
  """Optional LayerNorm2d + Conv 2x2/2 downsample, then `depth` stacked blocks."""

  def __init__(self, in_dim: int, dim: int, depth: int, *, downsample: bool, kernel_size: int,
               eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    if downsample:
      self.downsample_norm = LayerNorm(in_dim, eps=eps, axis_name='norm', param_dtype=param_dtype)
      self.downsample_conv = Conv(in_dim, dim, (2, 2), strides=(2, 2),
                                  axes=(None, None, _CHANNELS, _HIDDEN), rngs=rngs, dtype=dtype,
                                  param_dtype=param_dtype)
    else:
      self.downsample_norm = self.downsample_conv = None
    self.blocks = stacked(
        lambda r: ConvNeXtBlock(dim, kernel_size=kernel_size, eps=eps, dtype=dtype,
                                param_dtype=param_dtype, rngs=r),
        depth, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.downsample_conv is not None:
      x = self.downsample_conv(self.downsample_norm(x))
    x, _ = scan_layers(self.blocks, lambda block, h, _: (block(h), None), x)
    return x


class ConvNeXt(nnx.Module):
  """ConvNeXt trunk; cfg = configs.omg_seg `backbone` (dims, depths, stem_patch, kernel_size,
  norm_eps, head_dim).

  with_clip_head: also hold the CLIP image head (`trunk.head.norm`, `head.mlp.fc1/fc2`) so that a
  converter can load every `visual.*` key. LIRA never runs it (open-vocabulary inference is off),
  so it has no forward here.
  """

  def __init__(self, cfg_backbone, *, with_clip_head: bool = False, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    cfg = cfg_backbone
    dims, depths = tuple(cfg.dims), tuple(cfg.depths)
    mods = dict(dtype=dtype, param_dtype=param_dtype)
    p = cfg.stem_patch
    self.stem_conv = Conv(3, dims[0], (p, p), strides=(p, p), axes=(None, None, None, _CHANNELS),
                          rngs=rngs, **mods)
    self.stem_norm = LayerNorm(dims[0], eps=cfg.norm_eps, axis_name='norm',
                               param_dtype=param_dtype)
    self.stages = nnx.List([
        ConvNeXtStage(dims[max(i - 1, 0)], dims[i], depths[i], downsample=i > 0,
                      kernel_size=cfg.kernel_size, eps=cfg.norm_eps, rngs=rngs, **mods)
        for i in range(len(dims))])
    if with_clip_head:
      width = dims[-1]
      self.head_norm = LayerNorm(width, eps=cfg.norm_eps, axis_name='norm',
                                 param_dtype=param_dtype)
      self.head_fc1 = Linear(width, width, axes=(_CHANNELS, _HIDDEN), rngs=rngs, **mods)
      self.head_fc2 = Linear(width, cfg.head_dim, axes=(_HIDDEN, _CHANNELS), use_bias=False,
                             rngs=rngs, **mods)

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    """x f32[B, H, W, 3] (normalised pixels, NHWC) -> per stage f32[B, H/s, W/s, C_i] for
    s = 4, 8, 16, 32 (H, W multiples of 32)."""
    x = self.stem_norm(self.stem_conv(x))
    features = []
    for stage in self.stages:
      x = stage(x)
      features.append(x)
    return features
