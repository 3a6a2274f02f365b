"""The LIRA training objective as released: text CE + (stage 2) point-sampled Dice/BCE over every
[SEG] prediction step, or (stage 1) text CE + the query re-projection MSE; stage 0 (the synthetic
stand-in for the pretrained checkpoints LIRA starts from) is the panoptic loss of the OMG-Seg
decoder plus, when the batch has text, the text CE of the InternVL model alone.

Two terms outside the released recipe, on in configs/tiny_synthetic.py (which measures them) and
off unless their weights are set: loss.pointer_weight (lira_jax/train/seg_pointer.py) and, in
stage 0, loss.panoptic.query_cls_weight: the class CE again on each layer's queries classified
alone (no mask pooling, panoptic.query_class_loss). It was meant to put the class (shape as well
as colour) into the object queries the LLM later reads; it lifts RES cIoU, but the queries alone
still name the shape of only 34 % of the val objects (README, session 14). A third, present
only with a mask refiner (lira_jax/models/mask_refine.py, cfg.model.mask_refine): Dice + BCE
of the refined windows, weighted by loss.refine_weight. With a [SEG] selector
(lira_jax/models/seg_select.py, cfg.model.seg_select): its choice, gate and noun terms,
weighted by loss.select_weight. With a region classifier
(lira_jax/models/region_classify.py, cfg.model.region_classify): its colour and shape
cross-entropy on the scene's objects, weighted by loss.region_weight, in stages 0 and 2."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lira_jax.models import region_classify, rej_presence, seg_select
from lira_jax.models.lira import LIRA, seg_targets
from lira_jax.models.mask_refine import crop_windows
from lira_jax.train import losses, panoptic, seg_pointer


def lira_loss(model: LIRA, batch: dict, rng: jax.Array, loss_cfg, *, pixel_feats=None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(total loss f32[], logged parts). batch: LIRA.__call__'s inputs plus gt_masks
  f32[B, K, Hg, Wg] (target k of a sample is the k-th [SEG]/[REJ] target of its answer); in
  stage 0: pixels and the synthetic_panoptic targets."""
  if model.stage == 0:
    dec = model.omg(batch['pixels']).decoder
    parts = panoptic.panoptic_loss(dec.class_logits, dec.mask_logits, batch, loss_cfg.panoptic)
    if loss_cfg.panoptic.get('query_cls_weight', 0.0):
      query_logits = model.omg.decoder.query_class_logits(dec.queries)  # after each layer
      parts['cls'] += panoptic.query_class_loss(query_logits, dec.mask_logits[1:], batch,
                                                loss_cfg.panoptic)
    if model.region_classifier is not None:
      parts['region'] = _region_loss(model, model.region_classifier(
          batch['pixels'], dec.mask_logits[-1]), dec.mask_logits[-1], batch, loss_cfg)
    if 'ids' in batch:
      logits, plan = model.internvl_logits(batch)
      parts['text'], parts['num_tokens'] = losses.text_loss(logits, plan.labels)
    return losses.total_loss(parts, loss_cfg)
  out = model(batch, pixel_feats=pixel_feats)
  # loss.rej_token_weight (not in the release; 1 = its loss) scales the NLL of each [REJ]
  # decision: a prior shift of log(weight) towards "no target".
  rej_weight = float(loss_cfg.get('rej_token_weight', 1.0))
  text, num_tokens = losses.text_loss(
      out.logits, out.plan.labels,
      ((int(model.tokens['rej']), rej_weight),) if rej_weight != 1.0 else ())
  parts = {'text': text, 'num_tokens': num_tokens}
  if model.stage == 1:
    pred = model.reproject_queries(out.query_feat)
    parts['proj'] = losses.projection_loss(pred, out.query_feat, weight=loss_cfg.proj_weight,
                                           valid=out.query_keep)
  else:
    gt = seg_targets(out.plan, batch['gt_masks'])
    mask_rng, refine_rng = jax.random.split(rng)
    parts.update(losses.mask_losses(mask_rng, out.seg_mask_logits, gt, out.seg_valid, loss_cfg))
    if model.mask_refiner is not None:
      parts['refine'] = _refine_loss(model, out, gt, batch['pixels'], refine_rng, loss_cfg)
    if loss_cfg.get('pointer_weight', 0.0):
      parts['pointer'], parts['num_pointed'] = seg_pointer.pointer_loss(
          out.seg_queries, out.query_mask_logits, out.query_feat, gt, out.seg_valid,
          weight=loss_cfg.pointer_weight, min_iou=loss_cfg.pointer_min_iou)
    if model.region_classifier is not None:
      parts['region'] = _region_loss(model, out.region_classes, out.query_mask_logits, batch,
                                     loss_cfg)
    if model.seg_select is not None:
      parts['select'] = _select_loss(model, out, gt, batch, loss_cfg)
    if model.rej_presence is not None:
      if 'gt_noun' not in batch:
        raise KeyError('model.rej_presence is trained on gt_noun (synthetic.noun_ids), which '
                       'this dataset does not give')
      parts['noun'] = loss_cfg.get('noun_weight', 1.0) * rej_presence.noun_loss(
          model.rej_presence, out.hidden, out.plan.seg_index, out.plan.seg_valid,
          out.plan.seg_target, batch['gt_noun'])
    parts['seg_dropped'] = jnp.sum(out.plan.num_seg) - jnp.sum(out.plan.seg_valid)
  return losses.total_loss(parts, loss_cfg)


def _region_loss(model: LIRA, region_classes, query_mask_logits: jax.Array, batch: dict,
                 loss_cfg) -> jax.Array:
  """The region classifier's cross-entropy on the scene's objects, weighted by
  loss.region_weight. region_classes: (colour f32[B, Q, C], shape f32[B, Q, T]) logits."""
  if 'pan_classes' not in batch:
    raise KeyError('model.region_classifier is trained on every object of the scene '
                   '(synthetic_panoptic.panoptic_targets), which this dataset does not give')
  return loss_cfg.get('region_weight', 1.0) * region_classify.region_class_loss(
      *region_classes, query_mask_logits, batch['pan_masks'], batch['pan_classes'],
      batch['pan_valid'], shapes=model.region_classifier.class_factors[1])


def _select_loss(model: LIRA, out, gt: jax.Array, batch: dict, loss_cfg) -> jax.Array:
  """The [SEG] selector's terms (lira_jax/models/seg_select.py), weighted by
  loss.select_weight: its choice against the pointer target, its gate, and its noun heads at
  the [SEG] slots. gt f32[B·M, S, S]."""
  if 'gt_noun' not in batch:
    raise KeyError('model.seg_select is trained on gt_noun (synthetic.noun_ids), which this '
                   'dataset does not give')
  target, has = seg_pointer.pointer_match(out.query_mask_logits, gt, out.seg_valid,
                                          loss_cfg.get('pointer_min_iou', 0.5))
  choice = seg_select.selection_loss(out.seg_select_scores, out.seg_gate, target, has,
                                     out.seg_valid)
  noun = rej_presence.noun_loss(model.seg_select, out.hidden, out.plan.seg_index,
                                out.plan.seg_valid & ~out.plan.seg_is_rej, out.plan.seg_target,
                                batch['gt_noun'], before=0)
  return loss_cfg.get('select_weight', 1.0) * (choice + noun)


def _refine_loss(model: LIRA, out, gt: jax.Array, pixels: jax.Array, rng: jax.Array, loss_cfg
                 ) -> jax.Array:
  """Dice + BCE of the mask refiner inside its windows, on the first loss_cfg.refine_max_masks
  valid [SEG] slots (the last prediction step, its logits held fixed: the refiner learns a
  correction, the [SEG] path trains as before). gt f32[B·M, S, S]."""
  n = out.seg_valid.shape[0]
  take = min(int(loss_cfg.refine_max_masks), n)
  # Valid slots first, in slot order; the tail is padding when fewer are valid.
  _, index = jax.lax.top_k(out.seg_valid.astype(jnp.float32) - jnp.arange(n) / (2.0 * n), take)
  m = n // pixels.shape[0]
  logits = jax.lax.stop_gradient(out.seg_mask_logits[-1][index])
  windows, origins = model.mask_refiner.refine_windows(logits, pixels,
                                                       (index // m).astype(jnp.int32))
  gt_windows = crop_windows(gt[index], origins, windows.shape[-1])
  parts = losses.mask_losses(rng, windows[None], gt_windows, out.seg_valid[index], loss_cfg)
  return loss_cfg.refine_weight * (parts['dice'] + parts['bce'])
