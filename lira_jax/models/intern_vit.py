"""InternVL2 semantic encoder: InternViT, pixel shuffle and the `mlp1` projector.

InternViT-300M is a pre-norm ViT with a CLS token, a learned absolute position embedding,
per-channel layer scale and no final norm. Its patch tokens (CLS dropped) are pixel-shuffled
(2x2 neighbours concatenated into channels) and projected into the LLM embedding space by `mlp1`.

Einsum legend: B batch, N query tokens, M key tokens, H heads, K head dim.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lira_jax  # noqa: F401  (disables eager sharding)
from lira_jax.nn.layers import (Conv, LayerNorm, Linear, gelu_exact, normal_init, scan_layers,
                                 stacked)

_TORCH_CUBIC_A = -0.75  # PyTorch's bicubic kernel; jax.image.resize uses -0.5


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """Keys cubic weights f64[..., 4] for taps at offsets -1, 0, 1, 2 from floor(x)."""
  a = _TORCH_CUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """f32[out_size, in_size] such that W @ v equals torch bicubic resizing of v along one axis.

  Matches F.interpolate(mode='bicubic', align_corners=False) with an explicit output size:
  source coordinate (i + 0.5) * in/out - 0.5, taps clamped to the border. The identity at
  in_size == out_size.
  """
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  base = np.floor(src)
  weights = _cubic_weights(src - base)
  taps = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3), 0, in_size - 1)
  matrix = np.zeros((out_size, in_size), np.float64)
  np.add.at(matrix, (np.repeat(np.arange(out_size), 4), taps.ravel()), weights.ravel())
  return matrix.astype(np.float32)


def pixel_shuffle(x: jax.Array, scale: float = 0.5, version: str = 'v2') -> jax.Array:
  """InternVL pixel shuffle: f32[B, h, w, C] -> f32[B, h*s, w*s, C/s^2] (v2).

  v2 token (i, j) holds concat(x[2i, 2j], x[2i, 2j+1], x[2i+1, 2j], x[2i+1, 2j+1]) for s = 0.5.
  v1 has the same tokens on a transposed grid, f32[B, w*s, h*s, C/s^2]. The reshape/transpose
  sequence is the original's, so any s with integer 1/s works.
  """
  if version not in ('v1', 'v2'):
    raise ValueError(f'unknown ps_version {version!r}')
  b, rows, cols, c = x.shape
  r = round(1 / scale)
  if not math.isclose(r * scale, 1.0) or rows % r or cols % r:
    raise ValueError(f'grid {rows}x{cols} cannot be pixel-shuffled with scale {scale}')
  x = x.reshape(b, rows, cols // r, c * r).transpose(0, 2, 1, 3)
  x = x.reshape(b, cols // r, rows // r, c * r * r)
  return x.transpose(0, 2, 1, 3) if version == 'v2' else x


class InternViTBlock(nnx.Module):
  """x += ls1 * proj(attn(norm1(x))); x += ls2 * fc2(gelu(fc1(norm2(x))))."""

  def __init__(self, cfg, *, dtype, param_dtype, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.num_heads, self.dtype = cfg.num_heads, dtype
    lin = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm1 = LayerNorm(d, eps=cfg.norm_eps, axis_name='norm', param_dtype=param_dtype)
    # Output columns [q; k; v], each head-major, as the checkpoint's fused qkv rows.
    self.qkv = Linear(d, 3 * d, axes=('vit_embed', 'vit_qkv'), use_bias=cfg.qkv_bias, **lin)
    self.proj = Linear(d, d, axes=('vit_qkv', 'vit_embed'), **lin)
    self.ls1 = nnx.Param(jnp.ones((d,), param_dtype), out_sharding=('norm',))
    self.norm2 = LayerNorm(d, eps=cfg.norm_eps, axis_name='norm', param_dtype=param_dtype)
    self.fc1 = Linear(d, cfg.mlp_dim, axes=('vit_embed', 'vit_mlp'), **lin)
    self.fc2 = Linear(cfg.mlp_dim, d, axes=('vit_mlp', 'vit_embed'), **lin)
    self.ls2 = nnx.Param(jnp.ones((d,), param_dtype), out_sharding=('norm',))

  def attention(self, x: jax.Array) -> jax.Array:
    """Bidirectional MHA, [B, N, D] -> [B, N, D]; softmax in float32."""
    b, n, d = x.shape
    q, k, v = jnp.unstack(self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads), axis=2)
    q = q * (d // self.num_heads) ** -0.5
    logits = jnp.einsum('bnhk,bmhk->bhnm', q, k).astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return self.proj(jnp.einsum('bhnm,bmhk->bnhk', probs, v).reshape(b, n, d))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.ls1[...].astype(self.dtype) * self.attention(self.norm1(x))
    h = self.fc2(gelu_exact(self.fc1(self.norm2(x))))
    return x + self.ls2[...].astype(self.dtype) * h


class InternViT(nnx.Module):
  """InternViT (InternVL2 `vision_model`); cfg = configs.common.vision_config."""

  def __init__(self, cfg, *, dtype=jnp.float32, param_dtype=jnp.float32, remat_policy=None,
               rngs: nnx.Rngs):
    d, p = cfg.hidden_size, cfg.patch_size
    self.patch_size, self.grid, self.dtype = p, cfg.image_size // p, dtype
    self.remat_policy = remat_policy
    self.patch_embed = Conv(cfg.num_channels, d, (p, p), strides=(p, p),
                            axes=(None, None, 'conv_in', 'vit_embed'), rngs=rngs, dtype=dtype,
                            param_dtype=param_dtype)
    self.cls_token = nnx.Param(normal_init(0.02)(rngs.params(), (1, 1, d), param_dtype),
                               out_sharding=(None, None, 'vit_embed'))
    self.pos_embed = nnx.Param(
        normal_init(0.02)(rngs.params(), (1, 1 + self.grid ** 2, d), param_dtype),
        out_sharding=(None, 'vit_pos', 'vit_embed'))
    self.layers = stacked(
        lambda r: InternViTBlock(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
        cfg.num_layers, rngs)

  def position_embedding(self, rows: int, cols: int) -> jax.Array:
    """f32[1, 1 + rows*cols, D]: the grid part bicubic-resized (in float32) to rows x cols."""
    pos = self.pos_embed[...]
    if (rows, cols) == (self.grid, self.grid):
      return pos
    grid = pos[0, 1:].astype(jnp.float32).reshape(self.grid, self.grid, -1)
    resized = jnp.einsum('ry,yxd,cx->rcd', bicubic_matrix(self.grid, rows), grid,
                         bicubic_matrix(self.grid, cols), precision=jax.lax.Precision.HIGHEST)
    resized = resized.reshape(1, rows * cols, -1).astype(pos.dtype)
    return jnp.concatenate([pos[:, :1], resized], axis=1)

  def embed(self, pixels: jax.Array) -> jax.Array:
    """pixels f32[B, H, W, C] -> tokens [B, 1 + (H/p)(W/p), D] (CLS first, patches row-major)."""
    x = self.patch_embed(pixels)
    b, rows, cols, d = x.shape
    cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (b, 1, d))
    x = jnp.concatenate([cls, x.reshape(b, rows * cols, d)], axis=1)
    return x + self.position_embedding(rows, cols).astype(self.dtype)

  def __call__(self, pixels: jax.Array, *, return_hidden_states: bool = False):
    """pixels f32[B, H, W, C] (NHWC) -> last_hidden_state [B, 1+N, D] in `dtype`.

    With return_hidden_states also [L+1, B, 1+N, D]: [0] embeddings, [k] output of block k-1.
    """
    x = self.embed(pixels)

    def body(block, h, _):
      h = block(h)
      return h, (h if return_hidden_states else None)

    last, per_layer = scan_layers(self.layers, body, x, remat_policy=self.remat_policy)
    if not return_hidden_states:
      return last
    return last, jnp.concatenate([x[None], per_layer], axis=0)


class VisionProjector(nnx.Module):
  """InternVL `mlp1`: LayerNorm -> Linear -> exact GELU -> Linear, [.., in] -> [.., H]."""

  def __init__(self, in_features: int, out_features: int, *, norm_eps: float, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    lin = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm = LayerNorm(in_features, eps=norm_eps, axis_name='norm', param_dtype=param_dtype)
    self.fc1 = Linear(in_features, out_features, axes=('proj_in', 'mlp'), **lin)
    self.fc2 = Linear(out_features, out_features, axes=('mlp', 'embed'), **lin)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(gelu_exact(self.fc1(self.norm(x))))


class SemanticEncoder(nnx.Module):
  """Tiles -> LLM-space image tokens: InternViT, drop CLS, pixel shuffle, mlp1."""

  def __init__(self, vision_cfg, projector_cfg, llm_hidden_size: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, remat_policy=None, rngs: nnx.Rngs):
    self.scale, self.ps_version = projector_cfg.downsample_ratio, projector_cfg.ps_version
    self.select_layer = projector_cfg.select_layer
    self.patch_size = vision_cfg.patch_size
    self.vit = InternViT(vision_cfg, dtype=dtype, param_dtype=param_dtype,
                         remat_policy=remat_policy, rngs=rngs)
    merged = vision_cfg.hidden_size * round(1 / self.scale) ** 2
    self.mlp1 = VisionProjector(merged, llm_hidden_size, norm_eps=projector_cfg.norm_eps,
                                dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def _shuffle(self, features: jax.Array, pixels: jax.Array) -> jax.Array:
    """ViT tokens [T, 1+N, D] of `pixels` -> shuffled tokens [T, n_tokens, D/s^2]."""
    t, _, d = features.shape
    rows, cols = pixels.shape[1] // self.patch_size, pixels.shape[2] // self.patch_size
    grid = features[:, 1:].reshape(t, rows, cols, d)
    shuffled = pixel_shuffle(grid, self.scale, self.ps_version)
    return shuffled.reshape(t, -1, shuffled.shape[-1])

  def intermediates(self, pixels: jax.Array) -> dict[str, jax.Array]:
    """Every stage, for verification: vit_last_hidden [T, 1+N, D], vit_hidden_states
    [L+1, T, 1+N, D], pixel_shuffle_out [T, n_tokens, D/s^2], vit_embeds [T, n_tokens, H]."""
    last, hidden = self.vit(pixels, return_hidden_states=True)
    shuffled = self._shuffle(hidden[self.select_layer], pixels)
    return dict(vit_last_hidden=last, vit_hidden_states=hidden, pixel_shuffle_out=shuffled,
                vit_embeds=self.mlp1(shuffled))

  def __call__(self, pixels: jax.Array) -> jax.Array:
    """pixels f32[T, H, W, 3] (NHWC, normalised) -> image tokens [T, n_tokens, H] in `dtype`."""
    if self.select_layer == -1:
      features = self.vit(pixels)
    else:  # the original also materialises every layer's output for other layers
      features = self.vit(pixels, return_hidden_states=True)[1][self.select_layer]
    return self.mlp1(self._shuffle(features, pixels))
