"""Basic layers with logical axis names on every parameter.

Parameter layouts follow Flax conventions: a Linear kernel is f32[in, out] (the transpose of a
torch weight), a Conv kernel is f32[kh, kw, in, out]. The logical names are mapped to mesh axes by
the single rules table in `lira_jax.sharding`.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]


def gelu_exact(x: jax.Array) -> jax.Array:
  """erf GELU (torch nn.GELU default). Flax's gelu defaults to the tanh approximation."""
  return jax.nn.gelu(x, approximate=False)


def normal_init(stddev: float):
  return jax.nn.initializers.normal(stddev)


class Linear(nnx.Module):
  """y = x @ kernel + bias, kernel f32[in, out] with logical axes `axes`."""

  def __init__(self, in_features: int, out_features: int, *, axes: Axes, use_bias: bool = True,
               rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               kernel_init=jax.nn.initializers.lecun_normal()):
    self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype),
                            out_sharding=tuple(axes))
    self.bias = (nnx.Param(jnp.zeros((out_features,), param_dtype), out_sharding=(axes[-1],))
                 if use_bias else None)

  @classmethod
  def from_variables(cls, kernel: nnx.Param, bias: nnx.Param | None, dtype) -> 'Linear':
    """A Linear that owns existing variables (used to unwrap adapters without moving paths)."""
    linear = object.__new__(cls)
    nnx.Module.__init__(linear)
    linear.in_features, linear.out_features = kernel.shape[-2], kernel.shape[-1]
    linear.dtype, linear.kernel, linear.bias = dtype, kernel, bias
    return linear

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class LayerNorm(nnx.Module):
  """LayerNorm with affine scale/bias; statistics in float32."""

  def __init__(self, dim: int, *, eps: float, axis_name: str, param_dtype=jnp.float32):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=(axis_name,))
    self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), out_sharding=(axis_name,))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...] + self.bias[...]).astype(dtype)


class RMSNorm(nnx.Module):
  """x * rsqrt(mean(x^2) + eps) in float32, cast back, then times the weight (InternLM2/Llama)."""

  def __init__(self, dim: int, *, eps: float, axis_name: str = 'embed', param_dtype=jnp.float32):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=(axis_name,))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + self.eps)
    return self.scale[...].astype(dtype) * y.astype(dtype)


class Embed(nnx.Module):
  """Token embedding table f32[V, D]; `attend` gives tied-output logits."""

  def __init__(self, vocab: int, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.dtype = dtype
    self.embedding = nnx.Param(normal_init(0.02)(rngs.params(), (vocab, dim), param_dtype),
                               out_sharding=('vocab', 'embed'))

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.dot(x.astype(self.dtype), self.embedding[...].T.astype(self.dtype))


class Conv(nnx.Module):
  """2-D convolution on NHWC inputs, kernel f32[kh, kw, in/groups, out]."""

  def __init__(self, in_features: int, out_features: int, kernel_size: Sequence[int], *,
               strides: Sequence[int] = (1, 1), padding='VALID', groups: int = 1,
               use_bias: bool = True, axes: Axes = (None, None, 'conv_in', 'conv_out'),
               rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    self.strides, self.padding, self.groups, self.dtype = tuple(strides), padding, groups, dtype
    shape = (*kernel_size, in_features // groups, out_features)
    self.kernel = nnx.Param(jax.nn.initializers.lecun_normal()(rngs.params(), shape, param_dtype),
                            out_sharding=tuple(axes))
    self.bias = (nnx.Param(jnp.zeros((out_features,), param_dtype), out_sharding=(axes[-1],))
                 if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    """f32[B, H, W, in] -> f32[B, H', W', out]."""
    x, kernel = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
    kh, kw, _, out = kernel.shape
    if self.padding != 'VALID':
      x = jnp.pad(x, ((0, 0), *self.padding, (0, 0)))
    if (kh, kw) == self.strides:
      y = _patchify_conv(x, kernel)
    elif self.groups > 1 and self.groups == out == x.shape[-1] and self.strides == (1, 1):
      y = _depthwise_conv(x, kernel)
    elif self.groups == 1 and self.strides == (1, 1):
      y = _shifted_matmul_conv(x, kernel)
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, self.strides, 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          feature_group_count=self.groups, precision=jax.lax.Precision.HIGHEST)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


# Patch embeddings, 1x1 convs and depthwise convs are written as matmuls and shifted sums: same
# arithmetic, but XLA's CPU convolution emitter has no fast path for their weight gradients
# (measured 2-5x slower per layer on the 2-core CI machine), and these forms are as good on GPU/TPU.
# The stride-1 forms carry their own VJPs: autodiff of a shifted slice is a zero-pad of the
# whole map per kernel tap, and the kernel gradient of a depthwise conv as kh*kw reductions over
# the batch is slower still (7x7 depthwise at 8x32x32x32 on 2 cores: 19 ms forward + backward
# by autodiff, 5 ms with the VJPs below). Each is jitted so that an eager call (tests,
# conversion checks) is one program, not k*k ops.

@jax.jit
def _patchify_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Non-overlapping kernel (stride == kernel size): x f32[B, H, W, C], kernel f32[kh, kw, C, O]
  -> f32[B, H // kh, W // kw, O]; rows/columns past the last whole patch are dropped."""
  b, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  ho, wo = h // kh, w // kw
  patches = x[:, :ho * kh, :wo * kw].reshape(b, ho, kh, wo, kw, c)
  return jnp.einsum('bhiwjc,ijco->bhwo', patches, kernel, precision=jax.lax.Precision.HIGHEST)


def conv3x3_same(conv: Conv, x: jax.Array) -> jax.Array:
  """3x3 'SAME' convolution f32[N, H, W, in] -> f32[N, H, W, out] with conv's parameters, as
  one matmul over the nine shifted copies of x. On CPU, for the small maps of the synthetic
  world's per-mask modules, this is much faster than XLA's convolution: in the stage-2 train step
  the mask refiner's convolutions cost 28 ms per step for 12 masks this way, against 150 ms
  with XLA's convolution and 110 ms with Conv.__call__'s shifted matmuls (which suit wider
  maps)."""
  kernel = conv.kernel[...]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  taps = jnp.concatenate([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], -1)
  return taps @ kernel.reshape(-1, kernel.shape[-1]) + conv.bias[...]


def _pad_for_transpose(g: jax.Array, kh: int, kw: int) -> jax.Array:
  """The cotangent of a VALID stride-1 conv, zero-padded so that a VALID conv of it with the
  flipped kernel gives the input's cotangent."""
  return jnp.pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))


def _matmul_taps(x: jax.Array, kernel: jax.Array) -> jax.Array:
  kh, kw = kernel.shape[:2]
  ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  taps = [jnp.einsum('bhwc,co->bhwo', x[:, i:i + ho, j:j + wo], kernel[i, j],
                     precision=jax.lax.Precision.HIGHEST) for i in range(kh) for j in range(kw)]
  return sum(taps[1:], taps[0])


@jax.custom_vjp
def _shifted_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 dense conv of a padded input: x f32[B, H, W, C], kernel f32[kh, kw, C, O]
  -> f32[B, H - kh + 1, W - kw + 1, O], one matmul per kernel tap."""
  return _matmul_taps(x, kernel)


def _shifted_matmul_bwd(res, g):
  x, kernel = res
  kh, kw = kernel.shape[:2]
  ho, wo = g.shape[1:3]
  dx = _matmul_taps(_pad_for_transpose(g, kh, kw), kernel[::-1, ::-1].swapaxes(2, 3))
  dk = jnp.stack([jnp.stack([
      jnp.einsum('bhwc,bhwo->co', x[:, i:i + ho, j:j + wo], g,
                 precision=jax.lax.Precision.HIGHEST) for j in range(kw)]) for i in range(kh)])
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_shifted_matmul.defvjp(lambda x, k: (_matmul_taps(x, k), (x, k)), _shifted_matmul_bwd)
_shifted_matmul_conv = jax.jit(_shifted_matmul)


def _depthwise_taps(x: jax.Array, kernel: jax.Array) -> jax.Array:
  kh, kw = kernel.shape[:2]
  ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  y = x[:, :ho, :wo] * kernel[0, 0, 0]
  for i in range(kh):
    for j in range(kw):
      if i or j:
        y = y + x[:, i:i + ho, j:j + wo] * kernel[i, j, 0]
  return y


@jax.custom_vjp
def _depthwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 depthwise conv of a padded input: x f32[B, H, W, C], kernel f32[kh, kw, 1, C]
  -> f32[B, H - kh + 1, W - kw + 1, C], one shifted multiply-add per kernel tap."""
  return _depthwise_taps(x, kernel)


def _depthwise_bwd(res, g):
  """Kernel gradient dk[i, j, c] = sum_b,h,w x[b, i+h, j+w, c] g[b, h, w, c], as one matmul
  batched over channels: for each row offset i, cross[c, i, v, w] = sum_b,h x[b, i+h, v, c]
  g[b, h, w, c] over all columns v of x, and dk[i, j] sums its diagonal v = w + j. Diagonal j of
  a [wo, W] matrix is column j of its row-major buffer, padded by wo, read as [wo, W + 1]. Holds
  kh copies of x (`rows`): fine for the stage-0 pixel path it was written for (the released
  recipe never back-propagates through the ConvNeXt). Batched over channels rather than over
  (channel, image) planes, it takes 3.1 instead of 4.9 ms for the tiny default's first stage
  (8 x 32 x 32 x 32, 2 CPU cores)."""
  x, kernel = res
  kh, kw = kernel.shape[:2]
  b, ho, wo, c = g.shape
  dx = _depthwise_taps(_pad_for_transpose(g, kh, kw), kernel[::-1, ::-1])
  width = wo + kw - 1
  rows = jnp.stack([x[:, i:i + ho] for i in range(kh)], axis=1)  # [b, kh, ho, W, c]
  cross = jnp.einsum('bihvc,bhwc->ciwv', rows, g, precision=jax.lax.Precision.HIGHEST)
  skewed = jnp.pad(cross.reshape(c, kh, wo * width), ((0, 0), (0, 0), (0, wo)))
  dk = skewed.reshape(c, kh, wo, width + 1).sum(2)[..., :kw]  # [c, kh, kw]
  return dx.astype(x.dtype), dk.transpose(1, 2, 0)[:, :, None].astype(kernel.dtype)


_depthwise.defvjp(lambda x, k: (_depthwise_taps(x, k), (x, k)), _depthwise_bwd)
_depthwise_conv = jax.jit(_depthwise)


def stacked(make_layer, num_layers: int, rngs: nnx.Rngs):
  """Builds `num_layers` copies of a layer with parameters stacked on a leading 'layers' axis."""

  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
  def make(layer_rngs):
    return make_layer(layer_rngs)

  return make(rngs.split(num_layers))


# Stacks this short are unrolled: a scan's while loop slices every layer's parameters out of the
# stack and writes every gradient back into it dynamically, which on 2 CPU cores cost the tiny
# default (3-layer LLM, 1-2-block ConvNeXt stages, 1-layer pixel decoder) 12-15 % of its train
# step (stage 2: 0.219 -> 0.185 s; stage 0: 0.202 -> 0.178 s, with the one-micro-batch
# accumulation unrolled too). Real-size stacks (24-layer LLMs and ViTs, the 27-block ConvNeXt-L
# stage) keep the loop, for compile time.
MAX_UNROLLED_LAYERS = 4


def scan_layers(layers: nnx.Module, body, carry, xs=None, remat_policy: str | None = None):
  """Runs `body(layer, carry, x) -> (carry, y)` over stacked layers with lax.scan (unrolled for
  at most MAX_UNROLLED_LAYERS layers).

  remat_policy: None (no rematerialisation) or a name in jax.checkpoint_policies.
  """
  graphdef, state = nnx.split(layers)

  def step(c, inputs):
    layer_state, x = inputs
    layer = nnx.merge(graphdef, layer_state)
    c, y = body(layer, c, x)
    # RNG counters advance inside the body (dropout); carry them out so masks differ per call.
    return c, (y, nnx.state(layer, nnx.RngState))

  if remat_policy:
    step = jax.checkpoint(step, policy=getattr(jax.checkpoint_policies, remat_policy))
  num_layers = jax.tree.leaves(state)[0].shape[0]
  carry, (ys, rng_state) = jax.lax.scan(step, carry, (state, xs),
                                        unroll=num_layers <= MAX_UNROLLED_LAYERS)
  nnx.update(layers, rng_state)
  return carry, ys
