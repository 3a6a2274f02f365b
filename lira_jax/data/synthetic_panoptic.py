"""Panoptic annotations of the synthetic world's scenes, for pre-training the OMG-Seg pixel path
(the released LIRA starts from OMG-Seg weights trained on COCO panoptic; a from-scratch tiny model
needs the same kind of start). Every object is a thing instance whose class is its colour and
shape (6 x 5 = 30 classes); the background and the clutter strokes are left unlabelled.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax.data import pixel_preprocess
from lira_jax.data.encode import pixel_frame_mask
from lira_jax.data.synthetic import COLOURS, SHAPES, Scene

CLASSES = tuple(f'{c} {s}' for c in COLOURS for s in SHAPES)
CLASS_FACTORS = (len(COLOURS), len(SHAPES))  # CLASSES enumerates colour x shape row-major


def class_id(colour: str, shape: str) -> int:
  return CLASSES.index(f'{colour} {shape}')


def encode_panoptic(scene: Scene, cfg) -> dict[str, np.ndarray]:
  """One panoptic batch element: pixels f32[S, S, 3] (as encode_sample prepares them) and
  `panoptic_targets`; S = cfg.model.omg.image_size."""
  pixels, _ = pixel_preprocess.preprocess_pixel_image(Image.fromarray(scene.image), cfg.model.omg)
  return dict(pixels=pixels, **panoptic_targets(scene, cfg))


def panoptic_targets(scene: Scene, cfg) -> dict[str, np.ndarray]:
  """pan_masks f32[M, h, w] (each object's visible-pixel fraction per cell of the stride-4 grid
  the decoder predicts on, h = S / 4), pan_classes i32[M], pan_valid bool[M];
  M = cfg.data.max_objects, S = cfg.model.omg.image_size."""
  omg = cfg.model.omg
  size, stride, m = omg.image_size, int(omg.head.strides[0]), int(cfg.data.max_objects)
  if len(scene.objects) > m:
    raise ValueError(f'{len(scene.objects)} objects do not fit max_objects={m}')
  masks = np.zeros((m, size // stride, size // stride), np.float32)
  classes = np.zeros((m,), np.int32)
  valid = np.zeros((m,), bool)
  for j, obj in enumerate(scene.objects):
    full = pixel_frame_mask(obj.mask, size)
    masks[j] = full.reshape(size // stride, stride, size // stride, stride).mean((1, 3))
    classes[j], valid[j] = class_id(obj.colour, obj.shape), True
  return dict(pan_masks=masks, pan_classes=classes, pan_valid=valid)
