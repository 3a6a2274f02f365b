"""gRefCOCO (evaluation.md §1.4, §1.6, §2.8) as GSVA-style [SEG] / [REJ] sources.

Files: `grefs(unc).json` (or `.p`) holds refs with RefCOCO's keys except that `ann_id` and
`category_id` are lists, `[-1]` (with `no_target: true`) marking an expression that names
nothing in the image; instances.json is COCO (polygon or RLE segmentations); images are COCO
train2014. A target's mask is the pixel-wise OR of its annotations' masks; a no-target
expression has an all-zero mask, and so has one whose annotations carry no segmentation. A
target is present when its mask has a pixel (rej.is_present), and then answers [SEG], else [REJ].

Modes (one item per image, except 'expression'):
  train       GSVA training: pool every (sentence, target) of the image's refs, sample up to
              `samples_per_image` without replacement, one question listing them and one answer
              with a part per target (rej.grefcoco_conversation, formats drawn from the same
              item generator). GSVA redraws another image when every sampled target is absent;
              a random-access source cannot, so one sampled slot is replaced by a target-bearing
              expression of the same image instead. Images without any are left out; an item
              that still has no present target raises ValueError (skipped by SkippingSource).
  eval        GSVA's teacher-forced evaluation unit: every sentence of every ref of the image in
              one prompt (rej.gres_eval_question) and `Sure,{t}:[SEG], {t}:[REJ].`
              (lira_tokens.gres_eval_answer).
  expression  one item per (ref, sentence), LIRA's single-expression protocol: question
              `Please segment {sent}.`; answer the referring (ILVC) form when the target is
              present and GSVA's one-target evaluation answer `Sure,{t}:[REJ].` when absent.
"""
from __future__ import annotations

import numpy as np

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax import lira_tokens, rej
from lira_jax.data.readers.coco_refs import image_info, load_instances, load_refs
from lira_jax.data.readers.example import (Example, item_rng, segmentation_mask,
                                           with_image)
from lira_jax.eval.gcg_metrics import encode_rle

MODES = ('train', 'eval', 'expression')


def target_ann_ids(ref: dict) -> list[int]:
  """The annotation ids a ref points at; [] for a no-target expression."""
  ids = ref['ann_id'] if isinstance(ref['ann_id'], list) else [ref['ann_id']]
  if ref.get('no_target') or -1 in ids:
    return []
  return [int(i) for i in ids]


def _eval_text(sentence: str) -> str:
  return rej.clean_expression(sentence.strip().lower())


class GRefCOCO:
  """Random-access gRefCOCO source over one split (see the module docstring for the modes)."""

  def __init__(self, grefs_path: str, instances_path: str, image_dir: str, split: str, *,
               mode: str = 'train', samples_per_image: int = 3, seed: int = 0,
               name: str = 'grefcoco'):
    if mode not in MODES:
      raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    self.name, self.mode, self.seed, self.image_dir = name, mode, seed, image_dir
    self.samples_per_image = samples_per_image
    self.instances = load_instances(instances_path)
    self._by_image: dict[int, list[tuple[dict, int]]] = {}
    for ref in load_refs(grefs_path):
      if ref['split'] == split:
        for k in range(len(ref['sentences'])):
          self._by_image.setdefault(ref['image_id'], []).append((ref, k))
    if mode == 'expression':
      self._items = [p for pairs in self._by_image.values() for p in pairs]
    else:
      self._items = [i for i, pairs in self._by_image.items()
                     if mode == 'eval' or any(target_ann_ids(r) for r, _ in pairs)]

  def __len__(self) -> int:
    return len(self._items)

  def _mask(self, ref: dict, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w), bool)
    for ann_id in target_ann_ids(ref):
      out |= segmentation_mask(self.instances.anns[ann_id]['segmentation'], h, w)
    return out

  def _example(self, key: str, image_id: int, pairs, turn: tuple[str, str], masks) -> Example:
    path, _, _ = image_info(self.instances, self.image_dir, image_id)
    meta = dict(image_id=image_id, ref_ids=[r['ref_id'] for r, _ in pairs],
                expressions=[r['sentences'][k]['sent'] for r, k in pairs],
                present=[bool(m.any()) for m in masks])
    return Example(self.name, key, path, (turn,), tuple(encode_rle(m) for m in masks), meta)

  def __getitem__(self, index: int) -> Example:
    if self.mode == 'expression':
      ref, k = self._items[index]
      _, h, w = image_info(self.instances, self.image_dir, ref['image_id'])
      mask = self._mask(ref, h, w)
      text = ref['sentences'][k]['sent']
      answer = (lira_tokens.referring_answer(text) if rej.is_present(mask)
                else lira_tokens.gres_eval_answer([(_eval_text(text), False)]))
      turn = (with_image(lira_tokens.referring_question(text)), answer)
      sent_id = ref['sentences'][k].get('sent_id', k)
      return self._example(f'{ref["ref_id"]}/{sent_id}', ref['image_id'], [(ref, k)], turn,
                           [mask])
    image_id = self._items[index]
    pairs = self._by_image[image_id]
    _, h, w = image_info(self.instances, self.image_dir, image_id)
    if self.mode == 'eval':
      masks = [self._mask(r, h, w) for r, _ in pairs]
      texts = [r['sentences'][k]['sent'] for r, k in pairs]
      answer = lira_tokens.gres_eval_answer(
          [(_eval_text(t), rej.is_present(m)) for t, m in zip(texts, masks)])
      return self._example(str(image_id), image_id, pairs,
                           (rej.gres_eval_question(texts), answer), masks)
    return self._train_item(index, image_id, pairs, h, w)

  def _train_item(self, index: int, image_id: int, pairs, h: int, w: int) -> Example:
    rng = item_rng(self.seed, self.name, index)
    chosen = rng.sample(range(len(pairs)), min(self.samples_per_image, len(pairs)))
    masks = [self._mask(pairs[i][0], h, w) for i in chosen]
    if not any(map(rej.is_present, masks)):
      spare = [i for i, (r, _) in enumerate(pairs) if target_ann_ids(r) and i not in chosen]
      if spare:
        slot = rng.randrange(len(chosen))
        chosen[slot] = rng.choice(spare)
        masks[slot] = self._mask(pairs[chosen[slot]][0], h, w)
    present = [rej.is_present(m) for m in masks]
    picked = [pairs[i] for i in chosen]
    texts = [r['sentences'][k]['sent'] for r, k in picked]
    turn = rej.grefcoco_conversation(texts, present, rng)
    if turn is None:
      raise ValueError(f'image {image_id}: no sampled expression has a non-empty target')
    return self._example(str(image_id), image_id, picked, turn, masks)
