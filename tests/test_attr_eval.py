"""AttrEval top-k and paired accuracies against hand-counted cases (evaluation.md §2.7)."""
from __future__ import annotations

import numpy as np
import pytest

from lira_jax.eval.attr_eval import attribute_ranks, paired_accuracy, topk_accuracy

LOGITS = np.array([
    [0.1, 2.0, 0.5, 1.0, -1.0],   # attribute 1: largest -> rank 0
    [3.0, 2.0, 1.0, 0.0, -1.0],   # attribute 2: beaten by 3.0 and 2.0 -> rank 2
    [0.0, 0.0, 0.0, 0.0, 0.0],    # attribute 4: all tied -> rank 0
    [5.0, 4.0, 3.0, 2.0, 1.0],    # attribute 4: smallest -> rank 4
], np.float32)
ATTR = np.array([1, 2, 4, 4])


def test_attribute_ranks():
  assert attribute_ranks(LOGITS, ATTR).tolist() == [0, 2, 0, 4]


def test_topk_accuracy():
  r = topk_accuracy(LOGITS, ATTR)
  assert r == {'acc_1': 2 / 4, 'acc_3': 3 / 4}  # ranks < 1: samples 0, 2; < 3: also 1
  assert topk_accuracy(LOGITS, ATTR, ks=(5,)) == {'acc_5': 1.0}


def test_topk_accuracy_all_missed_and_empty():
  # The attribute token is the smallest logit everywhere: no hit at 1 or 3.
  assert topk_accuracy(LOGITS[3:].repeat(3, 0), [4, 4, 4]) == {'acc_1': 0.0, 'acc_3': 0.0}
  assert topk_accuracy(np.zeros((0, 5), np.float32), []) == {'acc_1': 0.0, 'acc_3': 0.0}


def test_topk_accuracy_rejects_bad_inputs():
  with pytest.raises(ValueError):
    topk_accuracy(LOGITS, [1, 2])       # N mismatch
  with pytest.raises(ValueError):
    topk_accuracy(LOGITS, [1, 2, 3, 5])  # id 5 outside V = 5


def test_paired_accuracy():
  answers = ['Yes', 'no ', 'yes', 'yes', 'Red', 'blue']
  annotations = ['yes', 'No', 'yes', 'no', 'red', 'Blue']
  # Pair 0 right twice, pair 1 wrong on its second question, pair 2 right twice.
  assert paired_accuracy(answers, annotations) == pytest.approx(2 / 3)


def test_paired_accuracy_all_no_empty_answers_and_no_pairs():
  annotations = ['yes', 'no', 'no', 'yes']
  assert paired_accuracy(['no'] * 4, annotations) == 0.0  # each pair has a wrong "no"
  assert paired_accuracy([''] * 4, annotations) == 0.0
  assert paired_accuracy([], []) == 0.0
  with pytest.raises(ValueError):
    paired_accuracy(['yes'] * 3, ['yes'] * 3)  # odd count: not pairs
  with pytest.raises(ValueError):
    paired_accuracy(['yes'], [])
