"""The teacher-forced evaluator's bookkeeping on hand-made numbers: the first slot of each target,
and the RES / GRES sums against the formulas of evaluation.md worked out by hand."""
import numpy as np
import pytest

import lira_jax  # noqa: F401
from lira_jax.eval import region_naming, teacher_forced
from lira_jax.sequence import SequencePlan, first_slot_per_target


def test_first_slot_per_target():
  # Sample 0: ILVC pair of target 0 at slots 0, 1 and target 1 at slot 2; sample 1: one slot.
  seg_target = np.array([[0, 0, 1, 0], [0, 0, 0, 0]], np.int32)
  seg_valid = np.array([[True, True, True, False], [False, True, False, False]])
  zeros = np.zeros((2, 4), np.int32)
  plan = SequencePlan(src=zeros, valid=zeros, positions=zeros, labels=zeros, seg_index=zeros,
                      seg_valid=seg_valid, seg_is_rej=zeros.astype(bool), seg_target=seg_target,
                      length=zeros[:, 0], num_seg=zeros[:, 0])
  slot, has = first_slot_per_target(plan, 3)
  np.testing.assert_array_equal(np.asarray(has), [[True, True, False], [True, False, False]])
  np.testing.assert_array_equal(np.asarray(slot)[np.asarray(has)], [0, 2, 1])


def test_accumulator_matches_hand_computed_metrics():
  acc = teacher_forced.Accumulator()
  res = dict(inter=np.array([[30.0], [0.0]]), union=np.array([[40.0], [10.0]]))
  acc.add_res(res, np.array([[True], [True]]))
  # GRES: a found target (I 8, U 10), a correct rejection, a missed rejection (pred area 5).
  gres = dict(inter=np.array([[8.0, 0.0, 0.0]]), union=np.array([[10.0, 0.0, 5.0]]),
              reject=np.array([[False, True, False]]))
  acc.add_gres(gres, np.array([[True, True, True]]), np.array([[False, True, True]]))
  m = acc.metrics()
  assert m['res_ciou'] == pytest.approx(30 / 50)
  assert m['res_giou'] == pytest.approx((30 / 40 + 0) / 2, rel=1e-4)
  assert m['gres_nacc'] == pytest.approx(1 / 2) and m['gres_tacc'] == pytest.approx(1.0)
  assert m['gres_giou'] == pytest.approx((0.8 + 1 + 0) / 3, rel=1e-4)
  assert m['gres_ciou'] == pytest.approx(8 / (10 + 5))  # GSVA: a missed rejection's area counts


def test_phrase_hits_by_hand():
  p, q = 7, 8  # <p>, </p>
  # Sample 0: two phrases, the second with one wrong token; sample 1: one phrase, all right.
  labels = np.array([[1, p, 3, 4, q, 1, p, 5, 6, q], [2, p, 3, q, 0, 0, 0, 0, 0, 0]], np.int32)
  predicted_next = np.array([[p, 3, 4, q, 1, p, 5, 9, q, 0], [p, 3, q, 0, 0, 0, 0, 0, 0, 0]])
  # position t predicts labels[t + 1]
  right, exists = region_naming.phrase_hits(predicted_next, labels, dict(p_start=p, p_end=q), 3)
  np.testing.assert_array_equal(np.asarray(exists), [[True, True, False], [True, False, False]])
  np.testing.assert_array_equal(np.asarray(right), [[True, False, False], [True, False, False]])
