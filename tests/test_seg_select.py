"""The [SEG] selector (lira_jax/models/seg_select.py): its per-query features against masks
measured by hand, its choice on a noun and on size, its gate, and its loss against a plain
cross-entropy."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lira_jax  # noqa: F401
from lira_jax.models.seg_select import (NUM_FEATURES, SegSelect, query_features, selection_loss,
                                        size_rank)

COLOURS, SHAPES, H, E = 2, 3, 4, 6


def _selector(colour_bias, shape_bias, feature_bias=(0.0,) * (NUM_FEATURES + 1), gate_bias=20.0):
  """A selector that ignores the state: fixed noun logits, feature weights and gate."""
  sel = SegSelect(H, E, (COLOURS, SHAPES), rngs=nnx.Rngs(0))
  for linear, bias in ((sel.colour_head, colour_bias), (sel.shape_head, shape_bias),
                       (sel.feature_weights, feature_bias), (sel.gate, [gate_bias])):
    linear.kernel[...] = jnp.zeros_like(linear.kernel[...])
    linear.bias[...] = jnp.asarray(bias, jnp.float32)
  sel.state_key.kernel[...] = jnp.zeros_like(sel.state_key.kernel[...])
  return sel


def _class_logits(classes):
  """f32[Q, C·S+1]: each query certain of its (colour, shape)."""
  rows = np.full((len(classes), COLOURS * SHAPES + 1), -10.0, np.float32)
  for q, (c, s) in enumerate(classes):
    rows[q, c * SHAPES + s] = 10.0
  return rows


def _square_masks(boxes, side=16):
  """f32[Q, side, side] logits: +20 inside each (y0, y1, x0, x1) box, -20 outside."""
  out = np.full((len(boxes), side, side), -20.0, np.float32)
  for q, (y0, y1, x0, x1) in enumerate(boxes):
    out[q, y0:y1, x0:x1] = 20.0
  return out


def test_query_features_are_area_centre_and_objectness():
  boxes = [(0, 4, 0, 8), (8, 16, 12, 16)]
  masks = _square_masks(boxes)
  logits = _class_logits([(0, 0), (1, 2)])
  logits[1, -1] = 10.0 + np.log(3.0)  # background 3x as likely as the class: p(object) = 1/4
  phi = np.asarray(query_features(jnp.asarray(logits[None]), jnp.asarray(masks[None]),
                                  jnp.asarray([[True, False]])))[0]
  for q, (y0, y1, x0, x1) in enumerate(boxes):
    area = (y1 - y0) * (x1 - x0) / 256
    centre = lambda a, b: (a + b) / 16 - 1  # cell centres (i + .5) / 16 * 2 - 1, averaged
    assert phi[q, 0] == pytest.approx(np.log(area + 1e-3), abs=1e-4)
    assert phi[q, 1] == pytest.approx(centre(x0, x1), abs=1e-4)
    assert phi[q, 2] == pytest.approx(centre(y0, y1), abs=1e-4)
  assert phi[0, 3] == pytest.approx(0.0, abs=1e-4)
  assert phi[1, 3] == pytest.approx(np.log(0.25), abs=1e-3)
  np.testing.assert_array_equal(phi[:, 4], [1.0, 0.0])


def _inputs(classes, boxes):
  logits = jnp.asarray(_class_logits(classes)[None])
  phi = query_features(logits, jnp.asarray(_square_masks(boxes)[None]),
                       jnp.ones((1, len(classes)), bool))
  feats = jnp.asarray(np.random.default_rng(0).normal(size=(1, len(classes), E)), jnp.float32)
  return logits, phi, feats


def test_selects_the_query_that_fits_the_noun_then_the_largest():
  """Noun `colour 1, shape 0`: the only query of that class wins and the mixed query is its
  vector (gate open). Noun `any colour, shape 2` over two shape-2 queries, with a positive weight
  on log area: the larger one wins."""
  classes = [(0, 0), (1, 0), (0, 2), (1, 2)]
  boxes = [(0, 8, 0, 8), (8, 10, 8, 10), (0, 4, 8, 12), (8, 16, 0, 8)]
  logits, phi, feats = _inputs(classes, boxes)
  hidden, own, image = jnp.zeros((1, H)), jnp.zeros((1, E)), jnp.zeros((1,), jnp.int32)
  noun = _selector([-20.0, 20.0, 0.0], [20.0, 0.0, 0.0, 0.0])
  mixed, score, gate = noun(hidden, own, image, feats, logits, phi)
  assert int(np.argmax(score[0])) == 1
  np.testing.assert_allclose(mixed[0], feats[0, 1], atol=1e-3)
  largest = _selector([0.0, 0.0, 20.0], [0.0, 0.0, 20.0, 0.0], feature_bias=(5.0, 0, 0, 0, 0, 0))
  score = np.asarray(largest(hidden, own, image, feats, logits, phi)[1])[0]
  assert int(np.argmax(score)) == 3 and score[3] - score[2] == pytest.approx(5 * np.log(
      (64 / 256 + 1e-3) / (16 / 256 + 1e-3)), rel=1e-3)
  closed = _selector([-20.0, 20.0, 0.0], [20.0, 0.0, 0.0, 0.0], gate_bias=-20.0)
  own = jnp.full((1, E), 3.0)
  np.testing.assert_allclose(closed(hidden, own, image, feats, logits, phi)[0], own, atol=1e-6)


def test_size_rank_is_the_share_of_fitting_others_a_query_outgrows():
  log_area = jnp.log(jnp.asarray([[0.1, 0.2, 0.05, 0.4]]))
  weight = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])  # query 3 does not fit: it counts for no one
  got = np.asarray(size_rank(log_area, weight))[0]
  sig = lambda x: 1 / (1 + np.exp(-10 * x))
  la = np.log([0.1, 0.2, 0.05, 0.4])
  want = [sum(sig(la[q] - la[r]) for r in range(3) if r != q) / (2 if q < 3 else 3)
          for q in range(4)]
  np.testing.assert_allclose(got, want, rtol=1e-3)
  assert got[1] > 0.95 and got[2] < 0.05


def test_selection_loss_is_cross_entropy_plus_gate_bce():
  scores = jnp.asarray([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0], [0.0, 0.0, 9.0]])
  gate = jnp.asarray([0.3, -2.0, 5.0])
  target = jnp.asarray([1, 0, 2])
  has = jnp.asarray([True, False, True])
  valid = jnp.asarray([True, True, False])
  got = float(selection_loss(scores, gate, target, has, valid))
  logp = lambda x, i: x[i] - np.log(np.exp(x).sum())
  s = np.asarray(scores)
  choice = -(logp(s[0], 1) + logp(s[2], 2)) / 2
  sig = lambda x: 1 / (1 + np.exp(-x))
  bce = -(np.log(sig(0.3)) + np.log(1 - sig(-2.0))) / 2
  assert got == pytest.approx(choice + bce, rel=1e-5)
