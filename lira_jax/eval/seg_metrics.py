"""Streaming RES and GRES segmentation metrics over per-expression pixel counts.

RES follows LISA's convention (used by GSVA, OMG-LLaVA and LIRA; evaluation.md §2.1): cIoU = ΣI /
(ΣU + 1e-10) over the split, gIoU = mean over expressions of I / (U + 1e-5), an expression whose
prediction and target are both empty scoring 1. LIRA's evaluator skips an expression for which no
[SEG] was generated: it adds nothing to ΣI / ΣU but still counts 0 in the gIoU mean.

GRES follows ReLA's official gRefCOCO evaluator (evaluation.md §2.2), with GSVA's variant
(§1.6) selectable:
  empty target,     predicted empty:     no-target TP, IoU 1, adds nothing to ΣI / ΣU;
  empty target,     predicted non-empty: no-target FN, IoU 0, the predicted area joins ΣU;
  non-empty target, predicted empty:     no-target FP; ReLA scores I as 0, GSVA keeps the I of the
                                         mask the re-evaluation pass produced;
  non-empty target, predicted non-empty: no-target TN, IoU = I / U.
N-acc = TP / (TP + FN), T-acc = TN / (TN + FP) (the public forks' form, not the +1 variant of
one ReLA commit), Pr@t = share of non-empty targets with IoU >= t. All values are fractions in
[0, 1] (ReLA prints ×100); a ratio whose denominator is 0 is reported as 0.

The per-expression numbers are meant to come from a jitted device pass (I and U as pixel counts);
these classes only sum them on the host.
"""
from __future__ import annotations

import numpy as np

PR_THRESHOLDS = (0.7, 0.8, 0.9)


def inter_union(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """Foreground pixel counts (I int64[...], U int64[...]) of pred, gt bool[..., H, W].

  ignore bool[..., H, W] marks pixels left out of both counts (LISA's label 255)."""
  pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
  if pred.shape != gt.shape:
    raise ValueError(f'pred {pred.shape} and gt {gt.shape} differ')
  keep = np.ones_like(pred) if ignore is None else ~np.asarray(ignore, bool)
  inter = np.sum(pred & gt & keep, axis=(-2, -1), dtype=np.int64)
  union = np.sum((pred | gt) & keep, axis=(-2, -1), dtype=np.int64)
  return inter, union


def _ratio(num: float, den: float) -> float:
  return float(num) / float(den) if den > 0 else 0.0


def _flat(x, dtype) -> np.ndarray:
  return np.asarray(x, dtype).reshape(-1)


class ResMeter:
  """LISA's cIoU / gIoU over single-target referring expressions."""

  def __init__(self):
    self.inter = 0.0
    self.union = 0.0
    self.iou_sum = 0.0
    self.count = 0

  def add(self, inter, union, has_mask=None) -> None:
    """inter, union f[N]: pixel counts per expression. has_mask bool[N] (default all True):
    False where the model produced no mask (no [SEG] generated)."""
    inter, union = _flat(inter, np.float64), _flat(union, np.float64)
    has = np.ones(inter.shape, bool) if has_mask is None else _flat(has_mask, bool)
    if not inter.shape == union.shape == has.shape:
      raise ValueError(f'shapes differ: {inter.shape}, {union.shape}, {has.shape}')
    # An empty prediction on an empty target is a perfect answer; LISA adds 1 for U = 0.
    iou = inter / (union + 1e-5) + (union == 0)
    self.inter += float(inter[has].sum())
    self.union += float(union[has].sum())
    self.iou_sum += float(iou[has].sum())
    self.count += int(has.size)

  def metrics(self) -> dict[str, float]:
    return dict(ciou=self.inter / (self.union + 1e-10),
                giou=_ratio(self.iou_sum, self.count), count=float(self.count))


class GresMeter:
  """gRefCOCO metrics; protocol 'rela' (default) or 'gsva' (see the module docstring)."""

  def __init__(self, protocol: str = 'rela', thresholds: tuple[float, ...] = PR_THRESHOLDS):
    if protocol not in ('rela', 'gsva'):
      raise ValueError(f"protocol must be 'rela' or 'gsva', got {protocol!r}")
    self.protocol = protocol
    self.thresholds = tuple(thresholds)
    self.inter = 0.0
    self.union = 0.0
    self.iou_sum = 0.0
    self.count = 0
    self.targets = 0  # expressions with a non-empty target, the Pr@t denominator
    self.pr_hits = [0] * len(self.thresholds)
    self.tp = self.fn = self.fp = self.tn = 0

  def add(self, inter, union, gt_empty, pred_empty) -> None:
    """inter, union f[N]: pixel counts of the predicted mask vs the target (for GSVA, the mask
    of the re-evaluation pass, so it exists even when rejected). gt_empty bool[N]: the
    expression has no target. pred_empty bool[N]: the model says "no target" (ReLA's NT flag,
    GSVA's [REJ], or an empty mask for a model with neither)."""
    inter, union = _flat(inter, np.float64), _flat(union, np.float64)
    gt_empty, pred_empty = _flat(gt_empty, bool), _flat(pred_empty, bool)
    if not inter.shape == union.shape == gt_empty.shape == pred_empty.shape:
      raise ValueError('inter, union, gt_empty and pred_empty must have one shape')
    tp, fn = gt_empty & pred_empty, gt_empty & ~pred_empty
    fp, tn = ~gt_empty & pred_empty, ~gt_empty & ~pred_empty
    if self.protocol == 'rela':
      inter = np.where(fp, 0.0, inter)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    target_iou = iou[~gt_empty]
    self.inter += float(inter[~gt_empty].sum())
    # A missed no-target is charged its whole predicted area; a correct one costs nothing.
    self.union += float(union[~gt_empty].sum() + union[fn].sum())
    self.iou_sum += float(tp.sum() + target_iou.sum())
    self.count += int(inter.size)
    self.targets += int(target_iou.size)
    for i, t in enumerate(self.thresholds):
      self.pr_hits[i] += int(np.sum(target_iou >= t))
    self.tp += int(tp.sum())
    self.fn += int(fn.sum())
    self.fp += int(fp.sum())
    self.tn += int(tn.sum())

  def metrics(self) -> dict[str, float]:
    out = dict(ciou=_ratio(self.inter, self.union), giou=_ratio(self.iou_sum, self.count),
               n_acc=_ratio(self.tp, self.tp + self.fn), t_acc=_ratio(self.tn, self.tn + self.fp),
               count=float(self.count))
    for t, hits in zip(self.thresholds, self.pr_hits):
      out[f'pr@{t:.1f}'] = _ratio(hits, self.targets)
    return out
