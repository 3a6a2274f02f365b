"""Multi-scale deformable attention vs a loop-based NumPy grid_sample and vs PyTorch (transformers'
`multi_scale_deformable_attention`, i.e. mmcv's pure-PyTorch formula on F.grid_sample, and the
transformers MSDeformAttn module)."""
import lira_jax  # noqa: F401

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from lira_jax.nn.deform_attn import MSDeformAttn, ms_deform_attn_sample

SHAPES = ((6, 9), (3, 5), (11, 7))  # deliberately non-square, non-power-of-two levels
TOL = 1e-5


def _bilinear_zero_pad(img: np.ndarray, x: float, y: float) -> np.ndarray:
  """grid_sample(align_corners=False, padding 'zeros') of img [H, W, D] at location (x, y) in [0, 1]."""
  h, w, _ = img.shape
  px, py = x * w - 0.5, y * h - 0.5
  x0, y0 = int(np.floor(px)), int(np.floor(py))
  out = np.zeros(img.shape[-1], np.float64)
  for yi in (y0, y0 + 1):
    for xi in (x0, x0 + 1):
      if 0 <= yi < h and 0 <= xi < w:
        out += (1 - abs(px - xi)) * (1 - abs(py - yi)) * img[yi, xi]
  return out


def _numpy_reference(value, shapes, locations, weights):
  b, _, m, d = value.shape
  _, q, _, n_levels, n_points, _ = locations.shape
  starts = np.cumsum([0] + [h * w for h, w in shapes])
  out = np.zeros((b, q, m, d))
  for bi in range(b):
    for level, (h, w) in enumerate(shapes):
      img = value[bi, starts[level]:starts[level + 1]].reshape(h, w, m, d).astype(np.float64)
      for qi in range(q):
        for mi in range(m):
          for p in range(n_points):
            x, y = locations[bi, qi, mi, level, p]
            out[bi, qi, mi] += weights[bi, qi, mi, level, p] * _bilinear_zero_pad(img[:, :, mi], x, y)
  return out.reshape(b, q, m * d)


def _random_inputs(seed, b=2, q=17, m=2, d=4, p=3):
  rng = np.random.default_rng(seed)
  s = sum(h * w for h, w in SHAPES)
  value = rng.standard_normal((b, s, m, d)).astype(np.float32)
  # Well outside [0, 1] too, so that every zero-padding case (one to four corners missing) occurs.
  locations = rng.uniform(-0.3, 1.3, (b, q, m, len(SHAPES), p, 2)).astype(np.float32)
  # Exact borders and pixel centres of level 0 (floor boundaries and weight-1 corners).
  locations[0, 0, :, :, 0] = 0.0
  locations[0, 1, :, :, 0] = 1.0
  locations[0, 2, :, 0, 0] = [0.5 / SHAPES[0][1], 1.5 / SHAPES[0][0]]
  weights = rng.uniform(0, 1, (b, q, m, len(SHAPES), p)).astype(np.float32)
  return value, locations, weights


@pytest.fixture(scope='module')
def sample_fn():
  return jax.jit(lambda v, loc, w: ms_deform_attn_sample(v, SHAPES, loc, w))


def test_sample_matches_numpy_loops(sample_fn):
  value, locations, weights = _random_inputs(0)
  got = np.asarray(sample_fn(value, locations, weights))
  want = _numpy_reference(value, SHAPES, locations, weights)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_sample_matches_torch_grid_sample(sample_fn):
  from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention
  value, locations, weights = _random_inputs(1, b=3, q=40, m=4, d=8, p=4)
  got = np.asarray(sample_fn(value, locations, weights))
  want = multi_scale_deformable_attention(torch.from_numpy(value), list(SHAPES),
                                          torch.from_numpy(locations),
                                          torch.from_numpy(weights)).numpy()
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_module_matches_transformers_msdeformattn():
  from transformers.models.mask2former.modeling_mask2former import (
      Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention as TorchMSDA)
  dim, heads, points, batch = 32, 4, 3, 2
  torch.manual_seed(0)
  ref = TorchMSDA(dim, heads, len(SHAPES), points).eval()
  with torch.no_grad():
    for p in ref.parameters():
      p.normal_(0, 0.3)
  model = MSDeformAttn(dim, num_heads=heads, num_levels=len(SHAPES), num_points=points,
                       rngs=nnx.Rngs(0))
  for name in ('sampling_offsets', 'attention_weights', 'value_proj', 'output_proj'):
    linear = getattr(ref, name)
    getattr(model, name).kernel[...] = jnp.asarray(linear.weight.detach().numpy().T)
    getattr(model, name).bias[...] = jnp.asarray(linear.bias.detach().numpy())

  rng = np.random.default_rng(2)
  s = sum(h * w for h, w in SHAPES)
  value = rng.standard_normal((batch, s, dim)).astype(np.float32)
  query = rng.standard_normal((batch, s, dim)).astype(np.float32)
  reference = rng.uniform(0, 1, (batch, s, len(SHAPES), 2)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(query), encoder_hidden_states=torch.from_numpy(value),
               reference_points=torch.from_numpy(reference), spatial_shapes_list=list(SHAPES))[0]
  got = nnx.jit(lambda mdl, qq, vv, rr: mdl(qq, vv, rr, SHAPES))(model, query, value, reference)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=TOL, rtol=0)


def test_bfloat16_value_stays_close(sample_fn):
  value, locations, weights = _random_inputs(3)
  got = sample_fn(jnp.asarray(value, jnp.bfloat16), locations, weights)
  assert got.dtype == jnp.bfloat16
  want = _numpy_reference(value, SHAPES, locations, weights)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.1, rtol=0)
