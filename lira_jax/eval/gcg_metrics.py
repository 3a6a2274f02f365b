"""Grounded conversation generation (GCG) metrics, GLaMM protocol (groundingLMM
eval/gcg/evaluate.py; evaluation.md §2.3).

  AP50     pycocotools COCOeval('segm') on category 1, every predicted mask scored 1.0, so
           the ranking is COCOeval's stable order: by sorted image id, then mask order;
  METEOR,  pycocoevalcap scorers on PTB-tokenised captions, over the images that have a
  CIDEr    prediction (COCOEvalCap without BLEU, ROUGE-L and SPICE);
  mIoU     per image, the pred x GT IoU matrix is matched greedily one to one (largest IoU
           first, while it is > 0); the image scores the mean matched IoU (0 if none) and the
           split the mean over its ground-truth images. Unmatched masks cost nothing.
The text-similarity recall (BERT embeddings) is not computed here.

Masks travel as COCO compressed RLE whose 'counts' is a str, so a prediction is
JSON-serialisable as GLaMM writes it: {image_id, caption, phrases, pred_masks}.
"""
from __future__ import annotations

import contextlib
import io
import re
from typing import Hashable, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

Rle = dict  # {'size': [H, W], 'counts': str}


def encode_rle(mask: np.ndarray) -> Rle:
  """Compressed RLE of mask bool[H, W], counts decoded to str for JSON."""
  rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
  return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def decode_rle(rle: Rle) -> np.ndarray:
  """bool[H, W]."""
  return mask_utils.decode(rle).astype(bool)


_TAG = re.compile(r'<.*?>')
_PHRASE = re.compile(r'<p>(.*?)</p>')


def clean_gcg_answer(text: str) -> tuple[str, list[str]]:
  """(caption, phrases) of a generated answer, as GLaMM's inference writes them: phrases are
  the <p>...</p> spans; the caption drops every <...> tag and [SEG] and collapses spaces."""
  text = text.replace('\n', '').replace('  ', ' ')
  phrases = [p.strip() for p in _PHRASE.findall(text)]
  caption = ' '.join(_TAG.sub('', text).replace('[SEG]', '').split()).strip("'").strip()
  return caption, phrases


def caption_scores(references: Mapping[Hashable, Sequence[str]],
                   candidates: Mapping[Hashable, str], *,
                   metrics: Sequence[str] = ('METEOR', 'CIDEr'), tokenize: bool = True
                   ) -> dict[str, float]:
  """Corpus METEOR / CIDEr of candidates[id] against references[id] over the candidates' ids.

  tokenize runs the PTB tokenizer (Java), as COCOEvalCap does; without it the texts are split
  on whitespace as given. METEOR needs Java too. No candidates: every metric 0."""
  missing = [i for i in candidates if not references.get(i)]
  if missing:
    raise KeyError(f'no reference caption for {len(missing)} image(s), e.g. {missing[0]!r}')
  unknown = set(metrics) - {'METEOR', 'CIDEr'}
  if unknown:
    raise ValueError(f'unsupported metrics {sorted(unknown)}')
  if not candidates:
    return {m: 0.0 for m in metrics}
  gts = {i: list(references[i]) for i in candidates}
  res = {i: [candidates[i]] for i in candidates}
  if tokenize:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{'caption': c} for c in caps] for i, caps in gts.items()})
    res = tokenizer.tokenize({i: [{'caption': c} for c in caps] for i, caps in res.items()})
  out = {}
  for name in metrics:
    if name == 'CIDEr':
      from pycocoevalcap.cider.cider import Cider
      scorer = Cider()
    else:
      from pycocoevalcap.meteor.meteor import Meteor
      scorer = Meteor()
    out[name] = float(scorer.compute_score(gts, res)[0])
  return out


def _image_entries(gt: Mapping[Hashable, Sequence[Rle]], pred: Mapping[Hashable, Sequence[Rle]]
                   ) -> list[dict]:
  # COCO reads an image's size only to rasterise polygons; RLE carries its own.
  images = []
  for img_id, rles in gt.items():
    sized = list(rles) + list(pred.get(img_id, ()))
    h, w = sized[0]['size'] if sized else (0, 0)
    images.append({'id': img_id, 'height': int(h), 'width': int(w)})
  return images


def mask_ap50(gt: Mapping[Hashable, Sequence[Rle]], pred: Mapping[Hashable, Sequence[Rle]]
              ) -> float:
  """COCO mask AP at IoU 0.5 of class-agnostic predictions (image id -> RLE list) against GT
  instances; images are gt's keys. NaN when there is no GT instance (COCOeval's -1), 0 when
  there is no prediction."""
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval

  unknown = [i for i in pred if i not in gt]
  if unknown:
    raise ValueError(f'predictions for {len(unknown)} image(s) without ground truth, '
                     f'e.g. {unknown[0]!r}')
  # COCOeval treats annotation id 0 as "unmatched", so ids start at 1.
  anns = [{'id': n, 'image_id': img_id, 'category_id': 1, 'segmentation': rle, 'iscrowd': 0,
           'area': float(mask_utils.area(rle))}
          for n, (img_id, rle) in enumerate(
              ((i, r) for i, rles in gt.items() for r in rles), start=1)]
  dets = [{'image_id': i, 'category_id': 1, 'segmentation': r, 'score': 1.0}
          for i, rles in pred.items() for r in rles]
  if not anns:
    return float('nan')
  if not dets:
    return 0.0
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = {'images': _image_entries(gt, pred), 'annotations': anns,
                       'categories': [{'id': 1, 'name': 'object'}]}
    coco_gt.createIndex()
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), 'segm')
    evaluator.params.catIds = [1]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return float(evaluator.stats[1])


def iou_matrix(pred: Sequence[Rle], gt: Sequence[Rle]) -> np.ndarray:
  """f64[P, G] mask IoUs; two empty masks have IoU 0."""
  if not pred or not gt:
    return np.zeros((len(pred), len(gt)))
  return np.asarray(mask_utils.iou(list(pred), list(gt), [0] * len(gt)), np.float64)


def greedy_matched_miou(iou: np.ndarray) -> float:
  """Mean IoU of GLaMM's greedy one-to-one matching of iou f[P, G] (0 if nothing matches)."""
  iou = np.array(iou, np.float64)
  matched = []
  while iou.size and iou.max() > 0:
    r, c = np.unravel_index(np.argmax(iou), iou.shape)
    matched.append(iou[r, c])
    iou = np.delete(np.delete(iou, r, axis=0), c, axis=1)
  return float(np.mean(matched)) if matched else 0.0


def mask_miou(gt: Mapping[Hashable, Sequence[Rle]], pred: Mapping[Hashable, Sequence[Rle]]
              ) -> float:
  """Mean over gt's images of greedy_matched_miou; an image without predictions scores 0."""
  if not gt:
    return 0.0
  scores = [greedy_matched_miou(iou_matrix(list(pred.get(i, ())), list(rles)))
            for i, rles in gt.items()]
  return float(np.mean(scores))
