"""Evaluation on a synthetic-world split with the teacher-forced evaluator: RES (single-target
referring expressions, LIRA's ILVC answer) and GRES (GSVA answers with present and absent
targets), plus PNG overlays of a few RES predictions. RES cIoU is also broken down by expression
kind (res_ciou_attribute / _relational / _superlative) and by whether the target shares its
colour with another object (res_ciou_shared_colour / _unique_colour): where the model fails.
res_right_object separates choosing from drawing: the fraction of RES targets whose predicted mask
overlaps the target best among the scene's objects (by IoU; also by kind,
res_right_object_<kind>), and res_iou_if_right the mean IoU of those.

gcg_phrase_acc is the teacher-forced GCG phrase accuracy (lira_jax.eval.region_naming: every
grounded phrase named right after its [SEG], with the GT local image under ILVC), the quantity
ILVC is for; with cfg.eval.gcg_own_regions also gcg_phrase_acc_own_regions, with the local images
of the model's own first-[SEG] masks (a second program and pass).

RES uses samples 0..num_res-1 of the split, GRES the next num_gres, GCG the next num_gcg.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import jax
import numpy as np
from PIL import Image, ImageDraw

from lira_jax.data import encode, synthetic
from lira_jax.eval import region_naming, seg_metrics, teacher_forced
from lira_jax.train import sharded_step
from lira_jax.train.loop import log_line, put_batch

GT_COLOUR, PRED_COLOUR = (40, 230, 60), (255, 40, 200)


def _samples(cfg, task: str, start: int, count: int) -> Iterator[synthetic.Sample]:
  d = cfg.data
  return (synthetic.make_sample(cfg.eval.split, i, task=task, size=d.image_size,
                                max_targets=d.max_targets, world_seed=d.world_seed)
          for i in range(start, start + count))


def _batches(cfg, tokenizer, samples, batch_size, *, with_image: bool = False):
  """(host batch, samples in it); the last batch is padded by repeating its first sample.
  with_image: the batch also holds the scenes' images u8[B, H, W, 3] and image_hw i32[B, 2]."""
  samples = iter(samples)
  while chunk := list(itertools.islice(samples, batch_size)):
    elements = [synthetic.encode_sample(s, tokenizer, cfg, ilvc=cfg.data.ilvc) for s in chunk]
    if with_image:
      elements = [dict(e, image=s.scene.image, image_hw=np.asarray(s.scene.image.shape[:2],
                                                                  np.int32))
                  for e, s in zip(elements, chunk)]
    elements += [elements[0]] * (batch_size - len(elements))
    yield encode.collate(elements), chunk


def overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray, caption: str) -> Image.Image:
  """u8[H, W, 3] with the predicted mask tinted and the GT mask's outline, caption above."""
  out = image.astype(np.float32)
  out[pred] = 0.5 * out[pred] + 0.5 * np.asarray(PRED_COLOUR, np.float32)
  edge = gt & ~(np.roll(gt, 1, 0) & np.roll(gt, -1, 0) & np.roll(gt, 1, 1) & np.roll(gt, -1, 1))
  out[edge] = GT_COLOUR
  h, w = gt.shape
  canvas = Image.new('RGB', (max(w, 256), h + 14), (255, 255, 255))
  canvas.paste(Image.fromarray(out.astype(np.uint8)), (0, 14))
  ImageDraw.Draw(canvas).text((2, 1), caption, fill=(0, 0, 0))
  return canvas


def picked_object(pred: np.ndarray, objects) -> int:
  """Index of the scene object whose mask has the highest IoU with bool pred[H, W], -1 when the
  prediction touches none."""
  ious = [np.sum(pred & o.mask) / max(np.sum(pred | o.mask), 1) for o in objects]
  return int(np.argmax(ious)) if max(ious, default=0) > 0 else -1


def _run_in_flight(predict, states, batches, mesh, score) -> None:
  """score(out, batch, tag) for each (batch, tag) of `batches`, keeping one batch in flight: the
  host draws, encodes and scores batches while the device runs the next one (dispatch is
  asynchronous; score's device_get waits)."""
  pending = None
  for batch, tag in batches:
    out = predict(states, put_batch(batch, mesh))
    if pending:
      score(*pending)
    pending = (out, batch, tag)
  if pending:
    score(*pending)


def compile_predict(cfg, graphdef, abstract_states, tokenizer, mesh):
  """evaluate's predict(states, batch) compiled for cfg's eval batches, from the states' shapes
  and shardings alone (abstract_states: ShapeDtypeStructs), so that it can compile while the
  model still trains (launch/train.py)."""
  fn = teacher_forced.make_predict_fn(graphdef, cfg.tokens)
  batch, _ = next(_batches(cfg, tokenizer, _samples(cfg, 'referring', 0, 1), cfg.eval.batch_size))
  return fn.lower(abstract_states, sharded_step.abstract_host_batch(batch, mesh)).compile()


def evaluate(cfg, graphdef, states, tokenizer, mesh, *, overlay_dir: str | None = None,
             predict=None, log=log_line) -> dict[str, float]:
  """RES cIoU / gIoU, GRES cIoU / gIoU / N-acc / T-acc and (cfg.eval.num_gcg samples) GCG phrase
  accuracy on cfg.eval.split; writes
  PNG overlays of up to cfg.eval.num_overlays RES samples (of the first batch) to overlay_dir.
  predict: compile_predict's function, else jitted here."""
  e = cfg.eval
  predict = predict or teacher_forced.make_predict_fn(graphdef, cfg.tokens)
  acc = teacher_forced.Accumulator()
  phrases = dict(right=0, valid=0)
  by_case, right_ious, res_targets = {}, [], 0
  right_by_kind = {}  # kind -> [right, targets]
  if overlay_dir:
    os.makedirs(overlay_dir, exist_ok=True)

  def score(out, batch, tagged_chunk):
    """Adds one batch's predictions (fetched from the device here) to the metrics."""
    nonlocal res_targets
    task, n, chunk = tagged_chunk
    out = jax.device_get(out)
    rows = np.arange(len(batch['ids'])) < len(chunk)
    has = out['has_slot'] & rows[:, None]
    if task == 'gcg':
      _count_phrases(phrases, out['phrase_right'], out['phrase_valid'] & rows[:, None])
    elif task == 'referring':
      first = np.zeros_like(has)
      first[:, 0] = has[:, 0]
      acc.add_res(out, first)
      for j, s in enumerate(chunk):
        if not first[j, 0]:
          continue
        (target,) = s.targets[0]
        res_targets += 1
        kind = synthetic.expression_kind(s.expressions[0])
        right = picked_object(out['masks'][j, 0], s.scene.objects) == target
        if right:
          right_ious.append(out['inter'][j, 0] / max(out['union'][j, 0], 1.0))
        tally = right_by_kind.setdefault(kind, [0, 0])
        tally[0], tally[1] = tally[0] + right, tally[1] + 1
        colour = 'shared' if synthetic.shares_colour(s.scene, target) else 'unique'
        for case in (kind, f'{colour}_colour'):
          by_case.setdefault(case, seg_metrics.ResMeter()).add(out['inter'][j, :1],
                                                               out['union'][j, :1])
    else:
      gt_empty = batch['gt_masks'].reshape(*has.shape, -1).max(-1) == 0
      acc.add_gres(out, has, gt_empty)
    if task == 'referring' and overlay_dir and n == 0:  # the first batch's samples
      for j, s in enumerate(chunk[:e.num_overlays]):
        iou = out['inter'][j, 0] / max(out['union'][j, 0], 1.0)
        overlay(s.scene.image, out['masks'][j, 0], batch['gt_masks'][j, 0] > 0.5,
                f'{s.expressions[0]}  IoU {iou:.2f}').save(
                    os.path.join(overlay_dir, f'res_{j:02d}.png'))

  gcg_start = e.num_res + e.num_gres

  def tagged_batches():
    for task, start, count in (('referring', 0, e.num_res), ('gres', e.num_res, e.num_gres),
                               ('gcg', gcg_start, e.get('num_gcg', 0))):
      for n, (batch, chunk) in enumerate(
          _batches(cfg, tokenizer, _samples(cfg, task, start, count), e.batch_size)):
        yield batch, (task, n, chunk)

  _run_in_flight(predict, states, tagged_batches(), mesh, score)
  result = acc.metrics()
  if phrases['valid']:
    result.update(gcg_phrase_acc=phrases['right'] / phrases['valid'],
                  gcg_phrases=phrases['valid'])
  if phrases['valid'] and e.get('gcg_own_regions'):
    result['gcg_phrase_acc_own_regions'] = _own_region_phrase_accuracy(
        cfg, graphdef, states, tokenizer, mesh, gcg_start, e.num_gcg)
  result.update({f'res_ciou_{case}': m.metrics()['ciou'] for case, m in sorted(by_case.items())})
  result.update(res_right_object=len(right_ious) / max(res_targets, 1),
                res_iou_if_right=float(np.mean(right_ious)) if right_ious else 0.0)
  result.update({f'res_right_object_{kind}': right / n
                 for kind, (right, n) in sorted(right_by_kind.items())})
  log('  evaluated ' + ', '.join(f'{k} {v:.4g}' for k, v in result.items()))
  return result


def _count_phrases(phrases: dict, right: np.ndarray, counted: np.ndarray) -> None:
  phrases['right'] += int(np.sum(right & counted))
  phrases['valid'] += int(np.sum(counted))


def _own_region_phrase_accuracy(cfg, graphdef, states, tokenizer, mesh, start: int,
                                count: int) -> float:
  """GCG phrase accuracy over samples start..start+count-1 with the local images of the
  model's own first-[SEG] masks (region_naming.own_region_hits)."""
  predict = region_naming.make_own_region_fn(graphdef, cfg.tokens)
  phrases = dict(right=0, valid=0)

  def score(out, batch, chunk):
    out = jax.device_get(out)
    rows = np.arange(len(batch['ids'])) < len(chunk)
    _count_phrases(phrases, out['right'], out['valid'] & rows[:, None])

  _run_in_flight(predict, states, _batches(cfg, tokenizer, _samples(cfg, 'gcg', start, count),
                                           cfg.eval.batch_size, with_image=True), mesh, score)
  return phrases['right'] / max(phrases['valid'], 1)
