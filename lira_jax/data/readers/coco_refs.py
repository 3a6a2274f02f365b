"""RefCOCO, RefCOCO+ and RefCOCOg (evaluation.md §2.8) as referring-segmentation sources.

Files, per dataset directory:
  refs(unc).p (RefCOCO, RefCOCO+) or refs(umd).p (RefCOCOg): a pickled list of refs, each
    {ref_id, ann_id (int), image_id, category_id, split, file_name, sent_ids,
     sentences: [{sent, raw, tokens, sent_id}, ...]}; split is train / val / testA / testB
    (RefCOCOg-umd: train / val / test). A ref's `file_name` names the ref, not the image file
    (it carries an ann-id suffix), so images are looked up in instances.json.
  instances.json: COCO `images` (id, file_name, height, width), `annotations` (id, image_id,
    category_id, segmentation, bbox, area, iscrowd) and `categories` (id, name).
  images: COCO train2014, in image_dir.

Each item is one referring turn in LIRA's training form (lira_tokens): question
`<image>\\nPlease segment {sent}.`, answer `[SEG]<image_id><image> <p> {sent} </p> [SEG].`, both
lower-cased, with the referred annotation's mask. per='sentence' yields every (ref, sentence)
pair of the split, as the evaluation does; per='ref' yields one item per ref with one of its
sentences drawn from (seed, ref_id), for training on objects rather than on sentences. (LIRA's
trainer groups up to 3 expressions of an image into one multi-turn conversation; that grouping
is left to the caller.) Masks are decoded when an item is read, so a corrupt annotation raises
there and not while the source is built.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax import lira_tokens
from lira_jax.data.readers.example import (Example, annotation_mask, item_rng,
                                           with_image)


@dataclasses.dataclass(frozen=True)
class CocoInstances:
  """instances.json indexed by id."""
  images: dict[int, dict]
  anns: dict[int, dict]
  categories: dict[int, str]


def load_instances(path: str) -> CocoInstances:
  with open(path) as f:
    data = json.load(f)
  return CocoInstances(images={im['id']: im for im in data['images']},
                       anns={a['id']: a for a in data['annotations']},
                       categories={c['id']: c['name'] for c in data.get('categories', ())})


def load_refs(path: str) -> list[dict]:
  """A refs file: a pickle (refs(unc).p, grefs(unc).p) or JSON (grefs(unc).json)."""
  if path.endswith('.json'):
    with open(path) as f:
      return json.load(f)
  with open(path, 'rb') as f:
    return pickle.load(f)


def image_info(instances: CocoInstances, image_dir: str, image_id: int) -> tuple[str, int, int]:
  """(image path, height, width) of a COCO image id."""
  image = instances.images[image_id]
  return os.path.join(image_dir, image['file_name']), int(image['height']), int(image['width'])


def referring_example(source: str, ref: dict, k: int, instances: CocoInstances,
                      image_dir: str) -> Example:
  """Sentence k of a ref as one referring turn with the ref's annotation mask."""
  sentence = ref['sentences'][k]
  text = sentence['sent']
  path, h, w = image_info(instances, image_dir, ref['image_id'])
  mask = annotation_mask(instances.anns[ref['ann_id']], h, w)
  turn = (with_image(lira_tokens.referring_question(text)), lira_tokens.referring_answer(text))
  meta = dict(expression=text, sentences=[s['sent'] for s in ref['sentences']],
              ref_id=ref['ref_id'], ann_id=ref['ann_id'], image_id=ref['image_id'],
              sent_id=sentence.get('sent_id', k), split=ref['split'],
              category=instances.categories.get(ref['category_id'], ''))
  return Example(source, f'{ref["ref_id"]}/{meta["sent_id"]}', path, (turn,), (mask,), meta)


class RefCOCO:
  """Random-access referring source over one split of a RefCOCO-family dataset."""

  def __init__(self, refs_path: str, instances_path: str, image_dir: str, split: str, *,
               per: str = 'sentence', seed: int = 0, name: str = 'refcoco'):
    if per not in ('sentence', 'ref'):
      raise ValueError(f"per must be 'sentence' or 'ref', got {per!r}")
    self.name, self.seed, self.image_dir = name, seed, image_dir
    self.instances = load_instances(instances_path)
    refs = [r for r in load_refs(refs_path) if r['split'] == split]
    if per == 'sentence':
      self._items = [(r, k) for r in refs for k in range(len(r['sentences']))]
    else:
      self._items = [(r, None) for r in refs if r['sentences']]

  def __len__(self) -> int:
    return len(self._items)

  def __getitem__(self, index: int) -> Example:
    ref, k = self._items[index]
    if k is None:
      k = item_rng(self.seed, self.name, ref['ref_id']).randrange(len(ref['sentences']))
    return referring_example(self.name, ref, k, self.instances, self.image_dir)
