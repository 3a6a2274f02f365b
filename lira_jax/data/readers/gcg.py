"""Grounded conversation generation (GCG) training json (GLaMM docs/datasets.md; evaluation.md
§2.8) as sources of LIRA's ILVC GCG answers.

Formats:
  grandf    GranDf_HA_GCG_train.json and OpenPsgGCG_*.json: a list of {file_name, height,
            width, image_id, caption, groundings}, groundings mapping each phrase to
            {token_positives: [start, end] (character offsets in the caption), rle_masks: [RLE,
            ...] (OR-ed into the phrase's mask)}; LIRA's copies add seg_img_path (the local
            image). As LIRA's reader does, the caption is stripped of quotes and whitespace and
            keeps its case, and a null grounding is ignored.
  refcocog  RefCOCOg_GCG_*.json: a list of one-entry dicts {key: {img_file_name, caption, refs:
            [{sentence, bbox, segmentation (polygons)}, ...]}}; the caption is stripped and
            lower-cased and each ref's phrase is located as the first occurrence of its
            lower-cased sentence (refs not found are ignored). The image size comes from the
            image file's header, which these files do not carry.

Answer: lira_tokens.gcg_answer, every grounded span replaced by
`[SEG]<image_id><image> <p> {span} </p> [SEG]`; targets in order of start. Spans that are empty,
fall outside the caption or overlap an earlier kept span are dropped (the in-place replacement
needs disjoint spans; LIRA's GranD-f reader does not check). An item left without a phrase
raises ValueError, for SkippingSource to count. The question is one of LIRA's six GCG questions,
drawn from (seed, index).
"""
from __future__ import annotations

import json
import os

from PIL import Image

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax import lira_tokens
from lira_jax.data.readers.example import Example, item_rng, segmentation_mask, with_image
from lira_jax.eval.gcg_metrics import encode_rle

# omg_llava/dataset/process_functions/gcg_process.py; "the this" is in the original.
GCG_QUESTIONS: tuple[str, ...] = (
    'Could you please give me a detailed description of the image? Please respond with '
    'interleaved segmentation masks for the corresponding parts of the answer.',
    'Can you provide a thorough description of the this image? Please output with interleaved '
    'segmentation masks for the corresponding phrases.',
    'Please describe in detail the contents of the image. Please respond with interleaved '
    'segmentation masks for the corresponding parts of the answer.',
    'Could you give a comprehensive explanation of what can be found within this picture? '
    'Please output with interleaved segmentation masks for the corresponding phrases.',
    'Could you give me an elaborate explanation of this picture? Please respond with '
    'interleaved segmentation masks for the corresponding phrases.',
    'Could you provide me with a detailed analysis of this photo? Please output with '
    'interleaved segmentation masks for the corresponding parts of the answer.',
)
def disjoint_spans(spans, length: int) -> list[int]:
  """Indices of the spans kept, in order of start: non-empty, inside [0, length], and not
  overlapping a span kept before them."""
  kept, end = [], 0
  for i in sorted(range(len(spans)), key=lambda i: spans[i][0]):
    s, e = spans[i]
    if 0 <= s < e <= length and s >= end:
      kept.append(i)
      end = e
  return kept


def _grandf(record: dict, image_dir: str) -> tuple:
  """(file name, image id, caption, height, width, [(span, segmentation, local image)]); the
  record carries its size, so image_dir is not needed (kept for one parser signature)."""
  caption = record['caption'].strip('"').strip()
  grounds = [(tuple(int(v) for v in g['token_positives']), g['rle_masks'], g.get('seg_img_path'))
             for g in record['groundings'].values() if g is not None]
  return (record['file_name'], record['image_id'], caption, int(record['height']),
          int(record['width']), grounds)


def _refcocog(record: dict, image_dir: str) -> tuple:
  """The same tuple; the image id is the record's key, the size comes from the image header."""
  ((key, record),) = record.items()
  caption = record['caption'].strip('"').strip().lower()
  grounds = []
  for ref in record['refs']:
    phrase = ref['sentence'].strip('"').strip().lower()
    start = caption.find(phrase)
    if phrase and start >= 0:
      grounds.append(((start, start + len(phrase)), ref['segmentation'], ref.get('seg_img_path')))
  with Image.open(os.path.join(image_dir, record['img_file_name'])) as image:
    w, h = image.size
  return record['img_file_name'], key, caption, h, w, grounds


_PARSERS = dict(grandf=_grandf, refcocog=_refcocog)


class GCGSource:
  """Random-access GCG source over one json file (format 'grandf' or 'refcocog')."""

  def __init__(self, json_path: str, image_dir: str, *, fmt: str = 'grandf', seed: int = 0,
               name: str | None = None):
    if fmt not in _PARSERS:
      raise ValueError(f'fmt must be one of {tuple(_PARSERS)}, got {fmt!r}')
    self.fmt, self.image_dir, self.seed, self.name = fmt, image_dir, seed, name or fmt
    with open(json_path) as f:
      self._records = json.load(f)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> Example:
    record = self._records[index]
    file_name, image_id, caption, h, w, grounds = _PARSERS[self.fmt](record, self.image_dir)
    kept = [grounds[i] for i in disjoint_spans([g[0] for g in grounds], len(caption))]
    if not kept:
      raise ValueError(f'GCG record {index} ({file_name}): no usable grounded phrase')
    spans = [span for span, _, _ in kept]
    masks = tuple(encode_rle(segmentation_mask(seg, h, w)) for _, seg, _ in kept)
    question = GCG_QUESTIONS[item_rng(self.seed, self.name, index).randrange(len(GCG_QUESTIONS))]
    turn = (with_image(question), lira_tokens.gcg_answer(caption, spans))
    meta = dict(caption=caption, phrases=[caption[s:e] for s, e in spans], spans=spans,
                image_id=image_id, local_images=[p for _, _, p in kept if p])
    return Example(self.name, str(index), os.path.join(self.image_dir, file_name), (turn,),
                   masks, meta)
