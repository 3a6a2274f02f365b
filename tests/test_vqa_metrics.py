"""VQAv2 soft accuracy and answer normalisation against hand-worked cases (evaluation.md §2.6)."""
from __future__ import annotations

import pytest

from lira_jax.eval.vqa_metrics import normalize_answer, soft_accuracy, vqa_accuracy


@pytest.mark.parametrize('raw, expected', [
    ('The Two dogs.', '2 dogs'),    # case, final period, article, number word
    ('T-shirt', 't shirt'),         # a mark inside a word splits it
    ('t - shirt', 't shirt'),       # a mark next to a space is dropped
    ('3.5', '3.5'),                 # a decimal point stays
    ('10,000', '10000'),            # commas go before anything else
    ("Man's hat", "man 's hat"),    # possessive split off
    ('yes!', 'yes'),
    ('(none)', '0'),
    ('Is it?\tA cat', 'is it cat'),
    ('dont', "don't"),              # contractions restored
    ("couldnt've", "couldn't've"),
    ('couldntve', 'couldntve'),     # both apostrophes missing: left as is
    ("Somebody'd", 'somebodyd'),    # the official table's reversed entry
    ('  ', ''),
])
def test_normalize_answer(raw, expected):
  assert normalize_answer(raw) == expected


# Normalised: 2, 2, 2, "2 dogs", 3, 3, 3, 3, 3, 3.
HUMANS = ['two', '2', '2', 'two dogs', '3', '3', '3', '3', 'three', '3']


@pytest.mark.parametrize('pred, expected', [
    # m humans agree: acc = (m · min(1, (m-1)/3) + (10-m) · min(1, m/3)) / 10.
    ('Two', (3 * 2 / 3 + 7 * 1) / 10),          # m 3 -> 0.9
    ('3', 1.0),                                 # m 6
    ('2 dogs', (1 * 0 + 9 * 1 / 3) / 10),        # m 1 -> 0.3
    ('four', 0.0),                              # m 0
    ('', 0.0),                                  # empty prediction
])
def test_soft_accuracy(pred, expected):
  assert soft_accuracy(pred, HUMANS) == pytest.approx(expected)


def test_soft_accuracy_two_agreeing_humans():
  # m 2: (2 · 1/3 + 8 · 2/3) / 10 = 0.6
  assert soft_accuracy('Red.', ['red', 'red'] + ['blue'] * 8) == pytest.approx(0.6)


def test_vqa_accuracy_mean_and_edge_cases():
  preds = ['Two', '3', 'four']
  assert vqa_accuracy(preds, [HUMANS] * 3) == pytest.approx((0.9 + 1 + 0) / 3)
  assert vqa_accuracy([], []) == 0.0                      # no questions
  assert vqa_accuracy(['', ''], [HUMANS] * 2) == 0.0      # every answer empty
  # A model that declines every question scores 0 unless humans said the same.
  assert vqa_accuracy(['unanswerable'] * 2, [HUMANS, ['unanswerable'] * 10]) == 0.5
  with pytest.raises(ValueError):
    vqa_accuracy(['a'], [])
  with pytest.raises(ValueError):
    soft_accuracy('a', [])
