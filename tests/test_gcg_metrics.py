"""GCG metrics (GLaMM protocol, evaluation.md §2.3) against hand-computed cases."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil

import numpy as np
import pytest

from lira_jax.eval.gcg_metrics import (caption_scores, clean_gcg_answer, decode_rle, encode_rle,
                                       greedy_matched_miou, iou_matrix, mask_ap50, mask_miou)

needs_java = pytest.mark.skipif(shutil.which('java') is None, reason='no java on PATH')
needs_evalcap = pytest.mark.skipif(importlib.util.find_spec('pycocoevalcap') is None,
                                   reason='pycocoevalcap is not installed')


def _mask(rows=slice(0, 0), cols=slice(0, 0)):
  m = np.zeros((4, 4), bool)
  m[rows, cols] = True
  return encode_rle(m)


A = _mask(slice(0, 2), slice(0, 4))     # rows 0-1: 8 px
B = _mask(slice(2, 4), slice(0, 2))     # rows 2-3, cols 0-1: 4 px
X = _mask(slice(2, 4), slice(2, 4))     # rows 2-3, cols 2-3: 4 px, disjoint from A and B
A_HALF = _mask(slice(0, 2), slice(0, 2))  # 4 px of A: IoU 4/8 = 0.5
A_3PX = _mask(slice(0, 1), slice(0, 3))   # 3 px of A: IoU 3/8
B_HALF = _mask(slice(2, 4), slice(0, 1))  # 2 px of B: IoU 2/4
EMPTY = _mask()


def test_rle_round_trip_is_json_serialisable():
  m = np.zeros((3, 5), bool)
  m[1, 2:] = True
  rle = encode_rle(m)
  assert isinstance(rle['counts'], str) and rle['size'] == [3, 5]
  assert np.array_equal(decode_rle(json.loads(json.dumps(rle))), m)


def test_clean_gcg_answer():
  glamm = 'The <p> man </p> [SEG] is riding a <p>brown  horse</p> [SEG].'
  assert clean_gcg_answer(glamm) == ('The man is riding a brown horse .', ['man', 'brown horse'])
  lira = '[SEG]<image_id><image> <p> A man </p> [SEG] rides a\nhorse.'
  assert clean_gcg_answer(lira) == ('A man rides ahorse.', ['A man'])  # GLaMM drops '\n' as is
  assert clean_gcg_answer('') == ('', [])


def test_ap50_half_recall():
  # One of two GT masks found exactly: precision 1 up to recall .5, so 51 of COCO's 101 recall
  # points (0, .01, ..., .5) have precision 1.
  assert mask_ap50({1: [A, B]}, {1: [A]}) == pytest.approx(51 / 101)
  assert mask_ap50({1: [A], 2: [B]}, {1: [A]}) == pytest.approx(51 / 101)


def test_ap50_all_found_and_iou_threshold():
  assert mask_ap50({1: [A, B]}, {1: [B, A]}) == pytest.approx(1.0)
  assert mask_ap50({1: [A]}, {1: [A_HALF]}) == pytest.approx(1.0)  # IoU .5 counts
  assert mask_ap50({1: [A]}, {1: [A_3PX]}) == 0.0                   # IoU .375 does not


def test_ap50_equal_scores_rank_in_prediction_order():
  # [X, A]: precision 0 then 1/2 at recall 1; interpolated precision .5 everywhere.
  assert mask_ap50({1: [A]}, {1: [X, A]}) == pytest.approx(0.5)
  # [A, X]: precision 1 at recall 1 before the false positive.
  assert mask_ap50({1: [A]}, {1: [A, X]}) == pytest.approx(1.0)


def test_ap50_empty_predictions_targets_and_unknown_images():
  assert mask_ap50({1: [A], 2: [B]}, {}) == 0.0
  assert mask_ap50({1: [A]}, {1: []}) == 0.0
  assert math.isnan(mask_ap50({1: [], 2: []}, {1: [A]}))  # no GT instance: undefined
  with pytest.raises(ValueError):
    mask_ap50({1: [A]}, {3: [A]})


def test_greedy_matched_miou():
  # Largest first: .9 takes pred 0 / GT 0, leaving only pred 1 / GT 1 at 0, which is not
  # matched. The image scores .9 although .8 + .7 would pair everything.
  assert greedy_matched_miou([[0.9, 0.8], [0.7, 0.0]]) == pytest.approx(0.9)
  # .6 (pred 0 / GT 1) first, then .5 (pred 1 / GT 0): mean .55.
  assert greedy_matched_miou([[0.2, 0.6], [0.5, 0.1]]) == pytest.approx(0.55)
  assert greedy_matched_miou(np.zeros((0, 2))) == 0.0
  assert greedy_matched_miou(np.zeros((2, 2))) == 0.0


def test_iou_matrix():
  np.testing.assert_allclose(iou_matrix([A, B_HALF], [A, B]), [[1, 0], [0, 0.5]])
  assert iou_matrix([EMPTY], [EMPTY]).tolist() == [[0.0]]
  assert iou_matrix([], [A]).shape == (0, 1)


def test_mask_miou():
  gt = {1: [A, B], 2: [B], 3: []}
  # Image 1 matches A-A (1) and B_HALF-B (.5): .75; X matches nothing and costs nothing.
  # Image 2 has no prediction: 0. Image 3 has no GT: 0. Mean (.75 + 0 + 0) / 3.
  assert mask_miou(gt, {1: [A, B_HALF, X], 3: [A]}) == pytest.approx(0.25)
  assert mask_miou(gt, {}) == 0.0  # empty predictions
  assert mask_miou({1: [], 2: []}, {1: [A]}) == 0.0  # empty targets
  assert mask_miou({}, {}) == 0.0


# CIDEr-D as pycocoevalcap computes it, with L = log(#images) - log(document frequency) and
# an n-gram absent from the references weighted as if seen once:
#   per image, mean over n = 1..4 of the clipped cosine between tf-idf vectors, times
#   exp(-delta^2 / 72) with delta the difference in bigram counts, times 10.


@needs_evalcap
def test_cider_identical_captions():
  # 2 images with disjoint words: every reference n-gram has df 1, weight log 2. Unigrams and
  # bigrams match exactly (cosine 1), no 3- or 4-grams: 10 * (1 + 1 + 0 + 0) / 4 = 5.
  refs = {1: ['a b'], 2: ['c d']}
  out = caption_scores(refs, {1: 'a b', 2: 'c d'}, metrics=('CIDEr',), tokenize=False)
  assert out == {'CIDEr': pytest.approx(5.0)}


@needs_evalcap
def test_cider_partial_match_length_penalty_and_empty_candidate():
  refs = {1: ['a c'], 2: ['d e']}
  # Image 1: unigrams {a, b} vs {a, c}: cosine 1/2; bigrams differ: 10 * .5 / 4 = 1.25.
  out = caption_scores(refs, {1: 'a b', 2: 'd e'}, metrics=('CIDEr',), tokenize=False)
  assert out['CIDEr'] == pytest.approx((1.25 + 5.0) / 2)
  # Image 1 'a b' vs 'a b c': unigram cosine 2/(sqrt2 sqrt3), bigram cosine 1/sqrt2, bigram
  # counts 1 vs 2 give the penalty exp(-1/72).
  refs = {1: ['a b c'], 2: ['x y']}
  out = caption_scores(refs, {1: 'a b', 2: 'x y'}, metrics=('CIDEr',), tokenize=False)
  image1 = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
  assert out['CIDEr'] == pytest.approx((image1 + 5.0) / 2)
  # An empty caption has no n-grams: 0 for its image.
  out = caption_scores({1: ['a b'], 2: ['c d']}, {1: '', 2: 'c d'}, metrics=('CIDEr',),
                       tokenize=False)
  assert out['CIDEr'] == pytest.approx((0 + 5.0) / 2)


def test_caption_scores_edge_cases():
  assert caption_scores({1: ['a b']}, {}, tokenize=False) == {'METEOR': 0.0, 'CIDEr': 0.0}
  with pytest.raises(KeyError):
    caption_scores({1: ['a b']}, {2: 'a b'}, tokenize=False)
  with pytest.raises(ValueError):
    caption_scores({1: ['a b']}, {1: 'a b'}, metrics=('SPICE',), tokenize=False)


@needs_evalcap
@needs_java
def test_cider_after_ptb_tokenisation():
  # The tokenizer lower-cases and drops punctuation: both images become exact matches of two
  # disjoint words, as in test_cider_identical_captions.
  out = caption_scores({1: ['a dog'], 2: ['Red, car!']}, {1: 'A dog.', 2: 'red car'},
                       metrics=('CIDEr',))
  assert out['CIDEr'] == pytest.approx(5.0)


@pytest.mark.slow  # the METEOR jar loads its paraphrase table: ~15 s
@needs_evalcap
@needs_java
def test_meteor():
  # METEOR 1.5 (English defaults alpha .85, beta .2, gamma .6): every word matches, so
  # Fmean = 1, in 3 chunks (dog cat | fish | bird) of 4 matches:
  # penalty .6 * (3/4)^.2 and score 1 - penalty.
  out = caption_scores({1: ['dog cat bird fish']}, {1: 'Dog, cat fish bird.'},
                       metrics=('METEOR',))
  assert out['METEOR'] == pytest.approx(1 - 0.6 * 0.75 ** 0.2, abs=1e-6)
