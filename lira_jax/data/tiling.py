"""InternVL dynamic tiling: the host-side image preprocessing of the semantic encoder.

An image is resized to a grid of cols x rows square tiles whose aspect ratio is closest to the
image's, cut row-major into tiles, and (when there is more than one tile) followed by a global
thumbnail. Tiles are normalised with ImageNet mean/std and laid out NHWC. Everything here runs on
the host (PIL / NumPy); `pad_tiles` gives the fixed-shape buffer + validity mask used under jit.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np
from PIL import Image

import lira_jax  # noqa: F401  (project convention: imported first everywhere)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

Grid = tuple[int, int]  # (cols, rows)


@functools.lru_cache(maxsize=64)
def target_ratios(min_tiles: int, max_tiles: int) -> tuple[Grid, ...]:
  """All grids (cols, rows) with min_tiles <= cols * rows <= max_tiles, sorted by cols * rows.

  The original builds these in a Python set and stable-sorts by the product, so grids with equal
  products keep set-iteration order (for 1..6: (1, 2) before (2, 1) but (3, 1) before (1, 3)).
  That order is a CPython hash-table detail; we reproduce it by inserting the same grids in the
  same sequence into a set on the same interpreter. It can only change the outcome when two grids
  of equal product tie exactly on aspect distance and both beat every other grid: on every
  integer size up to 4000 x 4000 that never happens for the (min, max) pairs LIRA uses ((1, 6),
  (1, 12), (4, 6), (4, 8), (4, 12), (6, 8)), whereas e.g. min = max = 8 on 5 x 16 picks (2, 4) in
  this order and (1, 8) in a width-major one. (Ties between different products are common, e.g.
  500 x 200 is equally far from 2:1 and 3:1, but the sort by product fixes their order.)
  """
  if not 1 <= min_tiles <= max_tiles:
    raise ValueError(f'need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}')
  grids = set()
  for n in range(min_tiles, max_tiles + 1):
    for cols in range(1, n + 1):
      for rows in range(1, n + 1):
        if min_tiles <= cols * rows <= max_tiles:
          grids.add((cols, rows))
  return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def find_closest_aspect_ratio(width: int, height: int, ratios: Sequence[Grid],
                              image_size: int = 448) -> Grid:
  """The grid in `ratios` (scanned in order) whose cols/rows is closest to width/height.

  On an exact tie in |aspect - cols/rows| the later grid (more tiles, as `ratios` is sorted by
  product) replaces the current best only if the image area exceeds half the area the later grid
  covers, i.e. small images are not blown up to more tiles than they have pixels for.
  """
  aspect, area = width / height, width * height
  best, best_diff = (1, 1), float('inf')
  for cols, rows in ratios:
    diff = abs(aspect - cols / rows)
    if diff < best_diff:
      best, best_diff = (cols, rows), diff
    elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
      best = (cols, rows)
  return best


def dynamic_preprocess(image: Image.Image, *, image_size: int = 448, min_tiles: int = 1,
                       max_tiles: int = 12, use_thumbnail: bool = True) -> list[Image.Image]:
  """Tiles of `image`: cols * rows crops of image_size², row-major, then the thumbnail if any.

  Resizes use PIL bicubic (Pillow's default for RGB, which the original relies on) in the pass
  order of the reference's Pillow (see `resize_bicubic`). The number of returned tiles is
  cols * rows + 1 when use_thumbnail and cols * rows > 1, else cols * rows.
  """
  if image.mode != 'RGB':
    image = image.convert('RGB')
  width, height = image.size
  cols, rows = find_closest_aspect_ratio(width, height, target_ratios(min_tiles, max_tiles),
                                         image_size)
  resized = resize_bicubic(image, (cols * image_size, rows * image_size))
  tiles = []
  for k in range(cols * rows):
    x0, y0 = (k % cols) * image_size, (k // cols) * image_size
    tiles.append(resized.crop((x0, y0, x0 + image_size, y0 + image_size)))
  if use_thumbnail and len(tiles) > 1:
    tiles.append(resize_bicubic(image, (image_size, image_size)))
  return tiles


def resize_bicubic(image: Image.Image, size: tuple[int, int]) -> Image.Image:
  """PIL bicubic resize to size = (width, height) in the pass order of the reference's Pillow 10.2.

  Pillow resamples horizontally, rounds to uint8, then vertically. Newer Pillow (13) runs the
  vertical pass first when the height shrinks much more than the width, which moves many pixels
  by a few levels; two single-axis calls pin the original order on any Pillow version.
  """
  width, height = size
  return image.resize((width, image.height), Image.Resampling.BICUBIC).resize(
      (width, height), Image.Resampling.BICUBIC)


def tiles_to_array(tiles: Sequence[Image.Image]) -> np.ndarray:
  """f32[T, S, S, 3]: RGB / 255, then (x - mean) / std, all in float32.

  The float32 operation order matches torchvision's ToTensor + Normalize bit for bit; the layout
  is NHWC instead of the original's NCHW.
  """
  pixels = np.stack([np.asarray(t.convert('RGB'), np.uint8) for t in tiles])
  return (pixels.astype(np.float32) / np.float32(255) - IMAGENET_MEAN) / IMAGENET_STD


def load_image_tiles(path_or_image: str | os.PathLike | Image.Image, cfg_tiling) -> np.ndarray:
  """f32[T, S, S, 3] for a file path or PIL image; `cfg_tiling` carries image_size, min_tiles,
  max_tiles and use_thumbnail (the `tiling` section of a model config)."""
  if isinstance(path_or_image, Image.Image):
    image = path_or_image
  else:
    with Image.open(path_or_image) as f:
      image = f.convert('RGB')
  tiles = dynamic_preprocess(image, image_size=cfg_tiling.image_size,
                             min_tiles=cfg_tiling.min_tiles, max_tiles=cfg_tiling.max_tiles,
                             use_thumbnail=cfg_tiling.use_thumbnail)
  return tiles_to_array(tiles)


def max_num_tiles(cfg_tiling) -> int:
  """The largest T `load_image_tiles` can return: the size of the static tile buffer."""
  extra = 1 if cfg_tiling.use_thumbnail and cfg_tiling.max_tiles > 1 else 0
  return cfg_tiling.max_tiles + extra


def pad_tiles(tiles: np.ndarray, max_tiles: int) -> tuple[np.ndarray, np.ndarray]:
  """Zero-pads f32[T, S, S, 3] to f32[max_tiles, S, S, 3] plus valid bool[max_tiles] (first T)."""
  num = tiles.shape[0]
  if num > max_tiles:
    raise ValueError(f'{num} tiles do not fit a buffer of max_tiles={max_tiles}')
  padded = np.zeros((max_tiles,) + tiles.shape[1:], np.float32)
  padded[:num] = tiles
  return padded, np.arange(max_tiles) < num
