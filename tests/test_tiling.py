"""InternVL dynamic tiling: hand-computed grids, tile order, normalisation, and the grid choice
against transformers' independent GotOcr2 implementation."""
import lira_jax  # noqa: F401  (first, per project convention)

import ml_collections
import numpy as np
import pytest
import torch
from PIL import Image

from lira_jax.data import tiling

S = 448


def _grid(w, h, lo=1, hi=12):
  return tiling.find_closest_aspect_ratio(w, h, tiling.target_ratios(lo, hi), S)


@pytest.mark.parametrize('w,h,lo,hi,grid', [
    (800, 600, 1, 12, (4, 3)),    # 4/3 exactly representable with 12 tiles
    (800, 600, 1, 6, (3, 2)),     # |4/3 - 3/2| = 1/6 beats |4/3 - 1| = 1/3
    (2000, 400, 1, 12, (5, 1)),
    (448, 448, 1, 12, (1, 1)),    # (2, 2), (3, 3) tie at 0 but 448² <= 0.5 * 448² * 4
    (896, 896, 1, 12, (2, 2)),    # 896² > 0.5 * 448² * 4, but not > 0.5 * 448² * 9
    (1000, 1000, 1, 12, (3, 3)),  # 1e6 > 0.5 * 448² * 9 = 903168
    (500, 200, 1, 6, (2, 1)),     # 2.5 is equally far from 2:1 and 3:1; small image keeps 2:1
    (5000, 2000, 1, 6, (3, 1)),   # same tie, large image moves to 3:1
    (448, 448, 4, 12, (2, 2)),    # min_tiles excludes (1, 1)
    (300, 1200, 1, 6, (1, 4)),
])
def test_grid_hand_cases(w, h, lo, hi, grid):
  assert _grid(w, h, lo, hi) == grid


def test_target_ratios_contents():
  for lo, hi in [(1, 1), (1, 6), (4, 12), (6, 8)]:
    grids = tiling.target_ratios(lo, hi)
    expected = {(i, j) for i in range(1, hi + 1) for j in range(1, hi + 1) if lo <= i * j <= hi}
    assert set(grids) == expected and len(grids) == len(expected)
    products = [i * j for i, j in grids]
    assert products == sorted(products)
  with pytest.raises(ValueError):
    tiling.target_ratios(3, 2)


def _block_image(cols, rows, size):
  """Block (c, r) filled with colour (40c + 10, 40r + 10, 200)."""
  arr = np.zeros((rows * size, cols * size, 3), np.uint8)
  for r in range(rows):
    for c in range(cols):
      arr[r * size:(r + 1) * size, c * size:(c + 1) * size] = (40 * c + 10, 40 * r + 10, 200)
  return Image.fromarray(arr)


def test_tile_order_and_thumbnail():
  image = _block_image(3, 2, S)  # 1344 x 896: aspect 1.5 -> (3, 2), resize is the identity
  tiles = tiling.dynamic_preprocess(image, max_tiles=12)
  assert len(tiles) == 7 and all(t.size == (S, S) for t in tiles)
  for k, tile in enumerate(tiles[:6]):
    c, r = k % 3, k // 3
    np.testing.assert_array_equal(np.asarray(tile), np.broadcast_to(
        np.array([40 * c + 10, 40 * r + 10, 200], np.uint8), (S, S, 3)))
  thumb = np.asarray(tiles[6]).astype(int)
  # The thumbnail is the whole image: sample the centre of each block at 1/3 x 1/2 scale.
  for r in range(2):
    for c in range(3):
      y, x = int((r + 0.5) * S / 2), int((c + 0.5) * S / 3)
      assert tuple(thumb[y, x]) == (40 * c + 10, 40 * r + 10, 200)
  no_thumb = tiling.dynamic_preprocess(image, max_tiles=12, use_thumbnail=False)
  assert len(no_thumb) == 6


def test_tiles_are_crops_of_bicubic_resize():
  rng = np.random.RandomState(0)
  image = Image.fromarray(rng.randint(0, 256, (300, 1000, 3), np.uint8))  # aspect 3.33 -> (3, 1)
  tiles = tiling.dynamic_preprocess(image, max_tiles=6)
  resized = np.asarray(image.resize((3 * S, S), Image.Resampling.BICUBIC))
  assert len(tiles) == 4
  for k in range(3):
    np.testing.assert_array_equal(np.asarray(tiles[k]), resized[:, k * S:(k + 1) * S])
  np.testing.assert_array_equal(np.asarray(tiles[3]),
                                np.asarray(image.resize((S, S), Image.Resampling.BICUBIC)))
  # Pillow's default filter for RGB is bicubic, which the original relies on implicitly.
  np.testing.assert_array_equal(np.asarray(image.resize((3 * S, S))), resized)


def test_single_tile_has_no_thumbnail():
  tiles = tiling.dynamic_preprocess(Image.new('RGB', (S, S), (1, 2, 3)))
  assert len(tiles) == 1
  ilvc = tiling.dynamic_preprocess(Image.new('RGB', (300, 120)), min_tiles=1, max_tiles=1)
  assert len(ilvc) == 1 and ilvc[0].size == (S, S)  # aspect not preserved


def test_normalisation_matches_torch_to_tensor_normalize():
  rng = np.random.RandomState(1)
  tiles = [Image.fromarray(rng.randint(0, 256, (S, S, 3), np.uint8)) for _ in range(2)]
  tiles[0].putpixel((0, 0), (0, 0, 0))
  tiles[0].putpixel((1, 0), (255, 255, 255))
  out = tiling.tiles_to_array(tiles)
  assert out.shape == (2, S, S, 3) and out.dtype == np.float32
  # torchvision ToTensor + Normalize, written out in torch (NCHW, float32).
  x = torch.from_numpy(np.stack([np.asarray(t) for t in tiles])).permute(0, 3, 1, 2).float()
  x = x.div(255)
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  ref = x.sub(mean).div(std).permute(0, 2, 3, 1).numpy()
  assert np.max(np.abs(out - ref)) == 0.0
  np.testing.assert_allclose(out[0, 0, 0], [-2.117904, -2.035714, -1.804444], atol=1e-6)
  np.testing.assert_allclose(out[0, 0, 1], [2.248908, 2.428571, 2.64], atol=1e-6)


def test_load_image_tiles_and_padding(tmp_path):
  path = tmp_path / 'img.png'
  _block_image(2, 1, 100).save(path)  # 200 x 100 -> (2, 1) + thumbnail
  cfg = ml_collections.ConfigDict(dict(image_size=64, min_tiles=1, max_tiles=6,
                                       use_thumbnail=True))
  tiles = tiling.load_image_tiles(str(path), cfg)
  assert tiles.shape == (3, 64, 64, 3)
  np.testing.assert_array_equal(tiles, tiling.load_image_tiles(Image.open(path), cfg))
  assert tiling.max_num_tiles(cfg) == 7
  padded, valid = tiling.pad_tiles(tiles, tiling.max_num_tiles(cfg))
  assert padded.shape == (7, 64, 64, 3) and padded.dtype == np.float32
  np.testing.assert_array_equal(valid, [True] * 3 + [False] * 4)
  np.testing.assert_array_equal(padded[:3], tiles)
  assert not padded[3:].any()
  with pytest.raises(ValueError):
    tiling.pad_tiles(tiles, 2)
  one = ml_collections.ConfigDict(dict(image_size=64, min_tiles=1, max_tiles=1,
                                       use_thumbnail=True))
  assert tiling.max_num_tiles(one) == 1


def _equal_product_tie(w, h, lo, hi):
  """True if the closest aspect distance is attained by two grids of equal product and different
  ratio: the only case where the order within equal products can change the choice."""
  grids = [(i, j) for i in range(1, hi + 1) for j in range(1, hi + 1) if lo <= i * j <= hi]
  dist = {g: abs(w / h - g[0] / g[1]) for g in grids}
  best = min(dist.values())
  tied = [g for g in grids if dist[g] == best]
  return any(a[0] * a[1] == b[0] * b[1] and a[0] * b[1] != a[1] * b[0]
             for a in tied for b in tied)


def test_grid_matches_transformers_got_ocr2():
  got_ocr2 = pytest.importorskip('transformers.models.got_ocr2.image_processing_pil_got_ocr2')
  rng = np.random.RandomState(0)
  sizes = [tuple(int(v) for v in rng.randint(16, 4000, 2)) for _ in range(300)]
  sizes += [(500, 200), (5000, 2000), (448, 448), (896, 896), (1300, 1200), (5, 16), (10, 32)]
  checked = 0
  for lo, hi in [(1, 6), (1, 12), (4, 6), (4, 8), (4, 12), (6, 8), (8, 8)]:
    for w, h in sizes:
      ours = _grid(w, h, lo, hi)
      theirs = tuple(got_ocr2.get_optimal_tiled_canvas((h, w), (S, S), lo, hi))
      if ours != theirs:
        assert _equal_product_tie(w, h, lo, hi), (w, h, lo, hi, ours, theirs)
      else:
        checked += 1
  assert checked >= 7 * len(sizes) - 5
