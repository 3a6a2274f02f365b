"""RES / GRES meters against hand-computed metrics (evaluation.md §2.1, §2.2, §1.6)."""
from __future__ import annotations

import numpy as np
import pytest

from lira_jax.eval.seg_metrics import GresMeter, ResMeter, inter_union


def test_inter_union_counts_foreground_and_skips_ignored_pixels():
  pred = np.array([[1, 1, 0], [0, 1, 0]], bool)
  gt = np.array([[1, 0, 0], [0, 1, 1]], bool)
  # I: (0,0), (1,1) -> 2. U: (0,0), (0,1), (1,1), (1,2) -> 4.
  inter, union = inter_union(pred, gt)
  assert (int(inter), int(union)) == (2, 4)
  # Ignoring (0,1) drops it from U only: I 2, U 3.
  ignore = np.zeros_like(pred)
  ignore[0, 1] = True
  inter, union = inter_union(pred, gt, ignore)
  assert (int(inter), int(union)) == (2, 3)
  # Leading axes are kept: the pair above and an empty pair (I 0, U 0).
  none = np.zeros_like(pred)
  inter, union = inter_union(np.stack([pred, none]), np.stack([gt, none]))
  assert inter.tolist() == [2, 0] and union.tolist() == [4, 0]


def test_inter_union_rejects_mismatched_shapes():
  with pytest.raises(ValueError):
    inter_union(np.zeros((2, 3), bool), np.zeros((3, 2), bool))


def test_res_lisa_convention():
  m = ResMeter()
  # (I 30, U 40), (I 0, U 10), both empty (I 0, U 0).
  m.add([30, 0, 0], [40, 10, 0])
  r = m.metrics()
  assert r['ciou'] == pytest.approx(30 / 50)
  # IoUs: 30 / 40.00001, 0, and 1 for the empty pair.
  assert r['giou'] == pytest.approx((30 / 40.00001 + 0 + 1) / 3, rel=1e-9)
  assert r['count'] == 3
  # No [SEG] generated: its counts are ignored (not in ΣI / ΣU) but it scores 0 in gIoU.
  m.add([5], [20], has_mask=[False])
  r = m.metrics()
  assert r['ciou'] == pytest.approx(30 / 50)
  assert r['giou'] == pytest.approx((0.75 + 1) / 4, rel=1e-6)
  assert r['count'] == 4


def test_res_from_masks():
  gt = np.zeros((2, 4, 4), bool)
  gt[0, :2, :2] = True   # 4 px
  gt[1, :, :] = True     # 16 px
  pred = np.zeros_like(gt)
  pred[0, :2, :1] = True  # 2 px inside target 0
  pred[1, :2, :] = True   # 8 px inside target 1
  m = ResMeter()
  m.add(*inter_union(pred, gt))
  r = m.metrics()
  # ΣI = 2 + 8, ΣU = 4 + 16; IoUs 2/4 and 8/16.
  assert r['ciou'] == pytest.approx(10 / 20)
  assert r['giou'] == pytest.approx(0.5, rel=1e-5)


def test_res_empty_predictions_targets_and_all_missing():
  m = ResMeter()
  m.add([0, 0], [4, 9])  # empty predictions on targets of 4 and 9 px
  assert m.metrics()['ciou'] == 0 and m.metrics()['giou'] == 0

  m = ResMeter()
  m.add([0, 0], [0, 3])  # empty targets: one empty prediction, one of 3 px
  r = m.metrics()
  assert r['giou'] == pytest.approx(0.5)  # IoUs 1 and 0
  assert r['ciou'] == 0  # 0 / (3 + 1e-10)

  m = ResMeter()
  m.add([0, 0], [0, 0])  # both empty: gIoU 1, cIoU 0 / 1e-10 = 0
  assert m.metrics()['giou'] == pytest.approx(1.0) and m.metrics()['ciou'] == 0

  m = ResMeter()
  m.add([3, 4], [5, 6], has_mask=[False, False])  # no [SEG] anywhere
  assert m.metrics() == dict(ciou=0.0, giou=0.0, count=2.0)

  assert ResMeter().metrics() == dict(ciou=0.0, giou=0.0, count=0.0)


# Six expressions:
#   e1 target, kept      I 8 U 10   TN, IoU .8
#   e2 target, kept      I 9 U 10   TN, IoU .9
#   e3 target, rejected  I 6 U 10   FP: ReLA IoU 0 (I zeroed), GSVA IoU .6
#   e4 empty,  rejected  U 0        TP, IoU 1
#   e5 empty,  kept      U 5        FN, IoU 0, U joins ΣU
#   e6 empty,  rejected  U 7        TP, IoU 1, the re-evaluated mask's area is not charged
INTER = [8, 9, 6, 0, 0, 0]
UNION = [10, 10, 10, 0, 5, 7]
GT_EMPTY = [False, False, False, True, True, True]
PRED_EMPTY = [False, False, True, True, False, True]


def test_gres_rela_protocol():
  m = GresMeter()
  m.add(INTER, UNION, GT_EMPTY, PRED_EMPTY)
  r = m.metrics()
  assert r['ciou'] == pytest.approx((8 + 9 + 0) / (10 + 10 + 10 + 5))
  assert r['giou'] == pytest.approx((0.8 + 0.9 + 0 + 1 + 0 + 1) / 6)
  assert r['n_acc'] == pytest.approx(2 / 3)  # TP 2, FN 1
  assert r['t_acc'] == pytest.approx(2 / 3)  # TN 2, FP 1
  # Target IoUs .8, .9, 0: two reach .7 and .8 (8/10 == 0.8 exactly), one reaches .9.
  assert (r['pr@0.7'], r['pr@0.8'], r['pr@0.9']) == pytest.approx((2 / 3, 2 / 3, 1 / 3))
  assert r['count'] == 6


def test_gres_gsva_protocol_keeps_the_rejected_masks_intersection():
  m = GresMeter('gsva')
  m.add(INTER, UNION, GT_EMPTY, PRED_EMPTY)
  r = m.metrics()
  assert r['ciou'] == pytest.approx((8 + 9 + 6) / 35)
  assert r['giou'] == pytest.approx((0.8 + 0.9 + 0.6 + 1 + 0 + 1) / 6)
  assert (r['n_acc'], r['t_acc']) == pytest.approx((2 / 3, 2 / 3))
  assert (r['pr@0.7'], r['pr@0.8'], r['pr@0.9']) == pytest.approx((2 / 3, 2 / 3, 1 / 3))


def test_gres_streams_over_batches():
  m = GresMeter()
  m.add(INTER[:2], UNION[:2], GT_EMPTY[:2], PRED_EMPTY[:2])
  m.add(INTER[2:], UNION[2:], GT_EMPTY[2:], PRED_EMPTY[2:])
  r = m.metrics()
  assert r['ciou'] == pytest.approx(17 / 35) and r['giou'] == pytest.approx(3.7 / 6)
  assert r['count'] == 6


def test_gres_matches_the_teacher_forced_accumulators_case():
  # tests/test_teacher_forced.py: a found target (I 8, U 10), a correct rejection, a missed
  # rejection of 5 px. No FP, so both protocols agree.
  for protocol in ('rela', 'gsva'):
    m = GresMeter(protocol)
    m.add([8, 0, 0], [10, 0, 5], [False, True, True], [False, True, False])
    r = m.metrics()
    assert r['giou'] == pytest.approx((0.8 + 1 + 0) / 3)
    assert r['ciou'] == pytest.approx(8 / 15)
    assert (r['n_acc'], r['t_acc']) == pytest.approx((1 / 2, 1.0))


def test_gres_empty_targets_only():
  m = GresMeter()
  m.add([0, 0], [0, 4], [True, True], [True, False])  # one TP, one FN of 4 px
  r = m.metrics()
  assert r['giou'] == pytest.approx(0.5)
  assert r['ciou'] == 0  # ΣI 0 over ΣU 4
  assert r['n_acc'] == pytest.approx(0.5)
  assert r['t_acc'] == 0 and r['pr@0.7'] == 0  # no targets: 0 by convention


def test_gres_all_rejected():
  # A target of 10 px whose re-evaluated mask has I 8, and an empty target; both rejected.
  args = ([8, 0], [10, 0], [False, True], [True, True])
  m = GresMeter()
  m.add(*args)
  r = m.metrics()
  assert r['ciou'] == 0 and r['giou'] == pytest.approx((0 + 1) / 2)
  assert (r['n_acc'], r['t_acc']) == (1.0, 0.0)
  assert (r['pr@0.7'], r['pr@0.8'], r['pr@0.9']) == (0.0, 0.0, 0.0)
  m = GresMeter('gsva')
  m.add(*args)
  r = m.metrics()
  assert r['ciou'] == pytest.approx(0.8) and r['giou'] == pytest.approx((0.8 + 1) / 2)
  assert (r['pr@0.7'], r['pr@0.8'], r['pr@0.9']) == (1.0, 1.0, 0.0)


def test_gres_empty_predictions_without_a_no_target_flag():
  # A model without an NT flag: an empty mask is the "no target" answer. Empty masks on two
  # targets (U = target area) and one empty target.
  inter, union = [0, 0, 0], [6, 4, 0]
  gt_empty = [False, False, True]
  m = GresMeter()
  m.add(inter, union, gt_empty, pred_empty=[True, True, True])
  r = m.metrics()
  assert r['ciou'] == 0 and r['giou'] == pytest.approx(1 / 3)
  assert (r['n_acc'], r['t_acc']) == (1.0, 0.0)


def test_gres_no_expressions_and_bad_protocol():
  r = GresMeter().metrics()
  assert r['ciou'] == r['giou'] == r['n_acc'] == r['t_acc'] == r['count'] == 0
  with pytest.raises(ValueError):
    GresMeter('lisa')


def test_gsva_protocol_on_one_of_each_decision():
  # no-target TP, no-target FN (40 px predicted), FP (target rejected, its mask kept), TN.
  m = GresMeter('gsva')
  m.add(inter=[0, 0, 30, 50], union=[0, 40, 60, 100], gt_empty=[True, True, False, False],
        pred_empty=[True, False, True, False])
  out = m.metrics()
  assert out['n_acc'] == 0.5 and out['t_acc'] == 0.5
  assert out['giou'] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
  assert out['ciou'] == pytest.approx(80 / 200)  # the FN's predicted area joins the union
