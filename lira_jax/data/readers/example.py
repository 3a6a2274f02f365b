"""The record every dataset reader yields, and the image, mask and seeding helpers they share.

Why one record: training and evaluation consume (image, conversation, target masks) whatever the
dataset, so each reader only translates its file format into `Example` and the rest of the
pipeline (tokenising, tiling, mask resizing) is written once.

  source      the reader's name ('refcoco', 'grefcoco', 'grandf', 'llava', 'pope', ...)
  id          unique within the source (e.g. '<ref_id>/<sent_id>')
  image_path  the image file ('' for a text-only conversation)
  turns       (user, answer) pairs; the first user turn starts with `<image>\\n` when there is an
              image. Answers use LIRA's ILVC forms (lira_tokens.referring_answer / gcg_answer),
              GSVA's gres forms, or plain text (LLaVA, VQA, POPE, AttrEval)
  masks       one COCO compressed RLE {'size': [H, W], 'counts': str} per target, in answer order
              (a GCG phrase or a referring expression is one target even though its ILVC answer
              holds two [SEG]); an absent ([REJ]) target is an all-zero RLE of the image size
  meta        free-form: expression texts, category, attribute, label, question id, ...

RLE rather than arrays keeps records small, JSON-serialisable and cheap to pickle into grain
workers; lira_jax.eval.gcg_metrics.decode_rle turns one back into bool[H, W].

COCO `segmentation` comes in four shapes, all handled by segmentation_mask: a list of polygons
[[x0, y0, x1, y1, ...], ...] (RefCOCO*), an uncompressed RLE {'size', 'counts': [int, ...]}
(iscrowd annotations), a compressed RLE {'size', 'counts': str} (gRefCOCO, GranD-f), or a list of
RLEs (GranD-f's rle_masks), which are OR-ed. An empty list is an empty mask, as GSVA treats an
annotation without segmentation. Anything else raises ValueError, so a corrupt annotation
surfaces as an exception that mixture.SkippingSource can count and skip.
"""
from __future__ import annotations

import dataclasses
import random

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax.eval.gcg_metrics import Rle, encode_rle
from lira_jax.tokens import IMAGE_PLACEHOLDER


@dataclasses.dataclass(frozen=True)
class Example:
  source: str
  id: str
  image_path: str
  turns: tuple[tuple[str, str], ...]
  masks: tuple[Rle, ...] = ()
  meta: dict = dataclasses.field(default_factory=dict)


def with_image(question: str) -> str:
  """The first user turn of an image conversation: `<image>\\n{question}`."""
  return IMAGE_PLACEHOLDER + '\n' + question


def item_rng(seed: int, *key) -> random.Random:
  """A generator for one item: the same (seed, key) gives the same draws in every process and
  run (a str seed is hashed with SHA-512, independent of PYTHONHASHSEED)."""
  return random.Random(':'.join(map(str, (seed, *key))))


def load_image(path: str) -> np.ndarray:
  """u8[H, W, 3] RGB. A missing, truncated or undecodable file raises OSError naming the path
  (PIL decodes lazily, so the pixels are forced here rather than at first use)."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise OSError(f'cannot read image {path!r}: {e}') from e


def _rles(segmentation, h: int, w: int) -> list:
  """pycocotools RLE objects of one segmentation (see the module docstring for its shapes)."""
  if isinstance(segmentation, dict):
    segmentation = [segmentation]
  if not isinstance(segmentation, list):
    raise ValueError(f'unsupported segmentation type {type(segmentation).__name__}')
  if not segmentation:
    return []
  if all(isinstance(s, dict) for s in segmentation):
    out = []
    for rle in segmentation:
      if [int(s) for s in rle['size']] != [h, w]:
        raise ValueError(f'RLE of size {rle["size"]} on an image of size {[h, w]}')
      # Uncompressed (list) counts go through frPyObjects; compressed ones are used as they are.
      out.append(mask_utils.frPyObjects(rle, h, w) if isinstance(rle['counts'], list) else rle)
    return out
  polygons = [[float(v) for v in p] for p in segmentation]
  # pycocotools reads a 4-number list as a box, and fewer than 3 points enclose nothing.
  if any(len(p) < 6 or len(p) % 2 for p in polygons):
    raise ValueError(f'degenerate polygon (coordinate counts {[len(p) for p in polygons]})')
  return mask_utils.frPyObjects(polygons, h, w)


def segmentation_mask(segmentation, h: int, w: int) -> np.ndarray:
  """bool[h, w]: the union of a COCO segmentation's parts."""
  rles = _rles(segmentation, h, w)
  if not rles:
    return np.zeros((h, w), bool)
  return np.any(mask_utils.decode(rles), axis=2)


def annotation_mask(ann: dict, h: int, w: int) -> Rle:
  """Compressed RLE of one COCO annotation's `segmentation` on an image of size (h, w)."""
  return encode_rle(segmentation_mask(ann['segmentation'], h, w))


def union_mask(anns, h: int, w: int) -> Rle:
  """Compressed RLE of the pixel-wise OR of several annotations (all zero for none)."""
  out = np.zeros((h, w), bool)
  for ann in anns:
    out |= segmentation_mask(ann['segmentation'], h, w)
  return encode_rle(out)
