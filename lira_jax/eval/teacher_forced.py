"""Teacher-forced RES / GRES evaluation in one jitted pass per batch (the simple evaluator; the
generation-based one lives with the decoder).

The answer of each sample is fed as text. A target's mask comes from the first [SEG] slot of
that target (LIRA's RES rule: the pre-ILVC [SEG]; its hidden state sees nothing of the answer
after it, so teacher forcing changes nothing for it), from the last prediction step, bilinearly
upsampled to the GT side and thresholded at logit 0 (sigmoid 0.5). "No target" is predicted when
the token before the slot is not argmax [SEG] (GSVA's teacher-forced rule, lira_jax.rej); the
mask of a [REJ] slot comes from a second pass with every [REJ] replaced by [SEG]. The same pass
scores the grounded phrases of the answer (lira_jax.eval.region_naming.phrase_hits; GCG).

Axis letters: B batch, K targets per sample (cfg.seq.max_seg), M [SEG]/[REJ] slots, S GT side,
R phrases (cfg.seq.max_regions).
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lira_jax import rej
from lira_jax.eval import region_naming, seg_metrics
from lira_jax.nn.resize import resize_bilinear
from lira_jax.sequence import first_slot_per_target


def predict(model, batch: dict, tokens: Mapping[str, int]) -> dict[str, jax.Array]:
  """Per target k of each sample: masks bool[B, K, S, S], reject bool[B, K] (predicted no
  target), has_slot bool[B, K] (the answer holds target k), inter / union f32[B, K] pixel counts
  against batch['gt_masks'] f32[B, K, S, S]; per phrase r: phrase_right / phrase_valid
  bool[B, R]. tokens: the ids of seg, rej, p_start, p_end (cfg.tokens)."""
  seg_id, rej_id = int(tokens['seg']), int(tokens['rej'])
  gt = batch['gt_masks'] > 0.5
  b, k, side = gt.shape[0], gt.shape[1], gt.shape[-1]
  first = model(batch)
  pred_ids = jnp.argmax(first.logits, axis=-1)
  phrase_right, phrase_valid = region_naming.phrase_hits(
      pred_ids, first.plan.labels, tokens, batch['regions'].shape[1])
  slot, has_slot = first_slot_per_target(first.plan, k)
  reject_per_slot = rej.teacher_forced_rejection(pred_ids, first.plan, seg_id, rej_id)
  reject = jnp.take_along_axis(reject_per_slot, slot, axis=1) & has_slot

  # One program for every batch (compiling a second one for RES costs more); a batch without
  # [REJ] (all of RES) takes the first pass's masks, the branch not taken does not run.
  logits = jax.lax.cond(
      jnp.any(batch['ids'] == rej_id),
      lambda: model(dict(batch, ids=rej.reeval_ids(batch['ids'], seg_id, rej_id))
                    ).seg_mask_logits[-1],
      lambda: first.seg_mask_logits[-1])  # [B·M, h, w]
  logits = logits.reshape(b, -1, *logits.shape[1:])
  logits = jnp.take_along_axis(logits, slot[:, :, None, None], axis=1)
  logits = model.refine_seg_logits(logits.reshape(b * k, *logits.shape[2:]), batch['pixels'],
                                   jnp.repeat(jnp.arange(b, dtype=jnp.int32), k))
  logits = logits.reshape(b, k, *logits.shape[1:])
  masks = (resize_bilinear(logits, (side, side)) > 0) & has_slot[..., None, None]
  inter = jnp.sum(masks & gt, axis=(-2, -1)).astype(jnp.float32)
  union = jnp.sum(masks | gt, axis=(-2, -1)).astype(jnp.float32)
  return dict(masks=masks, reject=reject, has_slot=has_slot, inter=inter, union=union,
              phrase_right=phrase_right, phrase_valid=phrase_valid)


def make_predict_fn(graphdef: nnx.GraphDef, tokens: Mapping[str, int]):
  """jit(states, batch) -> predict(...), for the model nnx.merge(graphdef, *states)."""
  tokens = {key: int(tokens[key]) for key in ('seg', 'rej', 'p_start', 'p_end')}

  @jax.jit
  def fn(states, batch):
    return predict(nnx.merge(graphdef, *states), batch, tokens)

  return fn


class Accumulator:
  """Running RES (LISA's convention) and GRES (GSVA's teacher-forced [REJ] protocol) metrics over
  batches of `predict` outputs; `add_*` take which targets count (bool[B, K])."""

  def __init__(self):
    self.res = seg_metrics.ResMeter()
    self.gres = seg_metrics.GresMeter('gsva')

  def add_res(self, out: dict, counted: np.ndarray) -> None:
    self.res.add(np.asarray(out['inter'])[counted], np.asarray(out['union'])[counted])

  def add_gres(self, out: dict, counted: np.ndarray, gt_empty: np.ndarray) -> None:
    self.gres.add(np.asarray(out['inter'])[counted], np.asarray(out['union'])[counted],
                  gt_empty[counted], np.asarray(out['reject'])[counted])

  def metrics(self) -> dict[str, float]:
    r = self.res.metrics()
    out = dict(res_ciou=r['ciou'], res_giou=r['giou'], res_count=int(r['count']))
    if self.gres.count:
      g = self.gres.metrics()
      out.update(gres_ciou=g['ciou'], gres_giou=g['giou'], gres_nacc=g['n_acc'],
                 gres_tacc=g['t_acc'], gres_count=int(g['count']),
                 **{f'gres_{k.replace("@", "_at_")}': v for k, v in g.items() if '@' in k})
    return out
