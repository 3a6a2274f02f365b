"""PyTorch-exact resizing and the pixel-path preprocessing, against torch / PIL / transformers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import lira_jax  # noqa: F401
from configs.omg_seg import get_config
from lira_jax.data.pixel_preprocess import pad_to_square, preprocess_pixel_image, unpad_mask_logits
from lira_jax.nn.resize import bilinear_matrix, nearest_indices, resize_bilinear, resize_nearest

SIZES = [((7, 9), (13, 5)), ((16, 16), (64, 64)), ((64, 64), (16, 16)), ((17, 23), (37, 11)),
         ((256, 256), (1024, 1024)), ((1024, 1024), (16, 16)), ((256, 256), (333, 197)),
         ((5, 1), (1, 5)), ((30, 40), (30, 41))]


def _rng_array(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize('in_hw,out_hw', SIZES)
def test_resize_bilinear_matches_torch(in_hw, out_hw):
  x = _rng_array((2, 3, *in_hw))
  want = F.interpolate(torch.from_numpy(x), size=out_hw, mode='bilinear', align_corners=False,
                       antialias=False).numpy()
  got = jax.jit(lambda v: resize_bilinear(v, out_hw))(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('n_in,n_out', [(256, 197), (197, 256), (1024, 1000), (1000, 1024),
                                        (37, 1024), (1024, 37), (3, 1), (1, 3), (333, 333)])
def test_interpolation_tables_equal_torch(n_in, n_out):
  # One-hot inputs make torch return its own weights / source indices exactly.
  eye = torch.eye(n_in).reshape(1, n_in, 1, n_in)
  weights = F.interpolate(eye, size=(1, n_out), mode='bilinear', align_corners=False)
  np.testing.assert_array_equal(bilinear_matrix(n_in, n_out), weights[0, :, 0].numpy().T)
  ramp = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in)
  index = F.interpolate(ramp, size=n_out, mode='nearest')[0, 0].numpy().astype(np.int64)
  np.testing.assert_array_equal(nearest_indices(n_in, n_out), index)


def test_resize_bilinear_other_axes_and_dtype():
  x = _rng_array((2, 12, 10, 4))  # NHWC
  want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(7, 25), mode='bilinear',
                       align_corners=False).permute(0, 2, 3, 1).numpy()
  got = resize_bilinear(jnp.asarray(x), (7, 25), axes=(1, 2))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)
  assert resize_bilinear(jnp.asarray(x, jnp.bfloat16), (7, 25), axes=(1, 2)).dtype == jnp.bfloat16


@pytest.mark.parametrize('in_hw,out_hw', SIZES)
def test_resize_nearest_matches_torch(in_hw, out_hw):
  x = np.random.default_rng(1).integers(0, 255, (2, *in_hw)).astype(np.uint8)
  want = F.interpolate(torch.from_numpy(x)[:, None].float(), size=out_hw, mode='nearest')
  got = resize_nearest(jnp.asarray(x), out_hw)
  assert got.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(got), want[:, 0].numpy().astype(np.uint8))


def _image(w, h, seed=0):
  arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  return Image.fromarray(arr), arr


COLOR = (122, 116, 104)


@pytest.mark.parametrize('w,h', [(9, 4), (10, 4), (4, 9), (4, 10), (6, 6)])
def test_pad_to_square_centring(w, h):
  image, arr = _image(w, h)
  square, (top, left) = pad_to_square(image, COLOR)
  side = max(w, h)
  # lira_reference §1.1: wide -> row offset (w-h)//2, tall -> column offset (h-w)//2.
  assert (top, left) == (((w - h) // 2, 0) if w >= h else (0, (h - w) // 2))
  got = np.asarray(square)
  assert got.shape == (side, side, 3)
  expected = np.empty((side, side, 3), np.uint8)
  expected[...] = COLOR
  expected[top:top + h, left:left + w] = arr
  np.testing.assert_array_equal(got, expected)


def _torch_reference(image: Image.Image, size: int, mean, std) -> np.ndarray:
  """Written independently: numpy canvas padding, PIL bicubic resize, torch normalisation."""
  arr = np.asarray(image.convert('RGB'))
  h, w = arr.shape[:2]
  side = max(h, w)
  canvas = np.empty((side, side, 3), np.uint8)
  canvas[...] = COLOR
  r0, c0 = (side - h) // 2, (side - w) // 2
  canvas[r0:r0 + h, c0:c0 + w] = arr
  resized = Image.fromarray(canvas).resize((size, size), Image.Resampling.BICUBIC)
  t = (torch.from_numpy(np.asarray(resized).copy()).double() / 255).float()
  return ((t - torch.tensor(mean)) / torch.tensor(std)).numpy()


@pytest.mark.parametrize('w,h', [(50, 31), (31, 50), (40, 40)])
def test_preprocess_matches_references(w, h):
  cfg = get_config('tiny')
  cfg.image_size = 64
  image, _ = _image(w, h, seed=3)
  pixels, meta = preprocess_pixel_image(image, cfg)
  assert pixels.shape == (64, 64, 3) and pixels.dtype == np.float32
  assert meta['orig_hw'] == (h, w) and meta['square'] == max(w, h)
  want = _torch_reference(image, 64, cfg.pixel_mean, cfg.pixel_std)
  np.testing.assert_allclose(pixels, want, atol=1e-5, rtol=0)

  from transformers import CLIPImageProcessorPil
  processor = CLIPImageProcessorPil(size={'shortest_edge': 64}, crop_size=64, resample=3,
                                    image_mean=list(cfg.pixel_mean), image_std=list(cfg.pixel_std))
  square, _ = pad_to_square(image, cfg.pad_color)
  hf = processor(images=square, return_tensors='np')['pixel_values'][0].transpose(1, 2, 0)
  np.testing.assert_allclose(pixels, hf, atol=1e-5, rtol=0)


@pytest.mark.parametrize('w,h', [(50, 31), (31, 50), (40, 40)])
def test_unpad_mask_logits_matches_torch(w, h):
  image, _ = _image(w, h)
  _, meta = preprocess_pixel_image(image, get_config('tiny'))
  logits = _rng_array((3, 16, 16))
  side = max(w, h)
  full = F.interpolate(torch.from_numpy(logits)[None], size=(side, side), mode='bilinear',
                       align_corners=False)[0]
  # lira_reference §7.4 crop: [floor(d/2), side - ceil(d/2)) on the padded axis, d = |w - h|.
  d = abs(w - h)
  lo, hi = d // 2, side - (d + 1) // 2
  want = (full[:, lo:hi, :] if w > h else full[:, :, lo:hi]).numpy()
  got = np.asarray(unpad_mask_logits(jnp.asarray(logits), meta))
  assert got.shape == (3, h, w)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
