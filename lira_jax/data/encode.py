"""LIRA batch elements from an image, a conversation and its target masks, and their batching:
what every data source (the synthetic world, the real-dataset readers) feeds the train step.

Element layout (no batch axis, padded to the cfg buffers): pixels f32[S, S, 3], tiles
f32[T, s, s, 3], tile_valid bool[T], regions f32[R, s, s, 3], region_valid bool[R], ids / labels
i32[Lt] (Lt = cfg.seq.max_len), text_valid bool[Lt], gt_masks f32[K, S, S] (K = cfg.seq.max_seg;
target k in answer order, zero when absent). S = cfg.model.omg.image_size, s =
cfg.model.vision.image_size.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from lira_jax.data import pixel_preprocess, tiling
from lira_jax.ilvc import region_slots, region_tile, strip_ilvc
from lira_jax.sequence import encode_conversation, pad_batch


def tiling_config(cfg):
  """cfg.tiling with max_tiles lowered so every image fits the cfg.seq.max_tiles buffer."""
  t = cfg.tiling.copy_and_resolve_references()
  if tiling.max_num_tiles(t) > cfg.seq.max_tiles:
    t.max_tiles = max(cfg.seq.max_tiles - (1 if t.use_thumbnail else 0), 1)
  return t


def image_inputs(image: Image.Image, cfg) -> dict[str, np.ndarray]:
  """The image both ways: pixels (OMG-Seg) and padded InternVL tiles."""
  pixels, _ = pixel_preprocess.preprocess_pixel_image(image, cfg.model.omg)
  tiles, tile_valid = tiling.pad_tiles(tiling.load_image_tiles(image, tiling_config(cfg)),
                                       cfg.seq.max_tiles)
  return dict(pixels=pixels, tiles=tiles, tile_valid=tile_valid)


def pixel_frame_mask(mask: np.ndarray, size: int) -> np.ndarray:
  """bool[H, W] image mask -> f32[size, size] in the pixel encoder's frame (padded to a square
  like the image, nearest-neighbour resized)."""
  square, _ = pixel_preprocess.pad_to_square(Image.fromarray(mask.astype(np.uint8)), (0,))
  return np.asarray(square.resize((size, size), Image.NEAREST), np.float32)


def encode_example(image: Image.Image, turns: Sequence[tuple[str, str]], masks: np.ndarray,
                   tokenizer, cfg, *, ilvc: bool, system_message: str | None = None
                   ) -> dict[str, np.ndarray]:
  """One element (layout above). turns: (user, answer) in LIRA's formats, the first user turn
  holding `<image>`; masks bool[K, H, W] on the image, one per [SEG]/[REJ] target in answer
  order (all zero for an absent one). ilvc False strips the local images from the answers
  (lira_jax.ilvc.strip_ilvc); with ILVC, the r-th present target's mask gives region r."""
  turns = [(q, a if ilvc else strip_ilvc(a)) for q, a in turns]
  ids, labels = encode_conversation(tokenizer, cfg.template, turns, system_message=system_message)
  ids, labels, text_valid = pad_batch([(ids, labels)], cfg.seq.max_len)

  region_valid = region_slots(ids[0], cfg.seq.max_regions)
  s = cfg.model.vision.image_size
  regions = np.zeros((cfg.seq.max_regions, s, s, 3), np.float32)
  local = [m for m in masks if m.any()][:int(region_valid.sum())]  # ILVC phrases: present targets
  for r, mask in enumerate(local):
    regions[r] = region_tile(image, mask, s)

  size, k = cfg.model.omg.image_size, cfg.seq.max_seg
  if len(masks) > k:
    raise ValueError(f'{len(masks)} targets do not fit max_seg={k}')
  gt_masks = np.zeros((k, size, size), np.float32)
  for j, mask in enumerate(masks):
    gt_masks[j] = pixel_frame_mask(mask, size)
  return dict(**image_inputs(image, cfg), regions=regions, region_valid=region_valid, ids=ids[0],
              labels=labels[0], text_valid=text_valid[0], gt_masks=gt_masks)


def collate(elements: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Stacks elements into the batch dict LIRA.__call__ (plus gt_masks) takes."""
  return {key: np.stack([e[key] for e in elements]) for key in elements[0]}
