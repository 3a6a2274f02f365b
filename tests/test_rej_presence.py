"""The [REJ] presence head (lira_jax/models/rej_presence.py): its offset against the class map
read by hand, its noun loss against a plain cross-entropy, and the noun targets of the synthetic
world's expressions."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lira_jax  # noqa: F401
from lira_jax.data import synthetic as sy
from lira_jax.models.rej_presence import RejPresence, noun_loss

COLOURS, SHAPES, H = 2, 3, 4


def _head(colour_bias, shape_bias):
  """A head whose noun heads ignore the state and output the given logits."""
  head = RejPresence(H, (COLOURS, SHAPES), rngs=nnx.Rngs(0))
  for linear, bias in ((head.colour_head, colour_bias), (head.shape_head, shape_bias)):
    linear.kernel[...] = jnp.zeros_like(linear.kernel[...])
    linear.bias[...] = jnp.asarray(bias, jnp.float32)
  return head


def _class_logits(objects, background=None):
  """f32[Q, C·S+1]: one query per (colour, shape) in `objects`, certain of it, plus a query whose
  best class is `background`'s (colour, shape) but which background beats (not an object)."""
  rows = []
  for c, s in objects:
    row = np.full(COLOURS * SHAPES + 1, -10.0, np.float32)
    row[c * SHAPES + s] = 10.0
    rows.append(row)
  if background is not None:
    row = np.full(COLOURS * SHAPES + 1, -10.0, np.float32)
    row[background[0] * SHAPES + background[1]], row[-1] = 5.0, 10.0
    rows.append(row)
  return np.stack(rows)


def test_offset_is_the_log_odds_that_no_object_fits_the_noun():
  """Noun `colour 0, any shape`: an image with a colour-0 object gets a strongly negative offset
  (present: toward [SEG]), one whose only colour-0 query loses to background a strongly positive
  one; a noun `colour 1, shape 2` against a colour-1 shape-0 object is absent too."""
  hidden = jnp.zeros((2, 1, H))
  logits = jnp.asarray(np.stack([_class_logits([(1, 1), (0, 2)]),
                                 _class_logits([(1, 1)], background=(0, 2))]))
  red_any = _head([20.0, 0.0, 0.0], [0.0, 0.0, 0.0, 20.0])
  offset = np.asarray(red_any(hidden, logits))[:, 0]
  assert offset[0] < -5 and offset[1] > 5, offset
  # By hand for image 0: fit = P(colour 0) of the colour-0 query ~= 1 - e^-20 terms.
  probs = np.exp(_class_logits([(1, 1), (0, 2)]).astype(np.float64))
  probs /= probs.sum(-1, keepdims=True)
  things = probs[:, :-1] / (1 - probs[:, -1:])
  wc = np.exp([20.0, 0, 0]) / np.exp([20.0, 0, 0]).sum()
  ws = np.exp([0.0, 0, 0, 20]) / np.exp([0.0, 0, 0, 20]).sum()
  fit = [(np.outer(wc[:-1] + wc[-1], ws[:-1] + ws[-1]) * t.reshape(COLOURS, SHAPES)).sum()
         for t in things]
  best = np.clip(max(fit), 1e-4, 1 - 1e-4)
  assert offset[0] == pytest.approx(np.log1p(-best) - np.log(best), rel=1e-3)
  blue_diamond = _head([0.0, 20.0, 0.0], [0.0, 0.0, 20.0, 0.0])
  offset = np.asarray(blue_diamond(hidden, jnp.asarray(_class_logits([(1, 0)])[None])))
  assert offset[0, 0] > 5


def test_noun_loss_is_the_cross_entropy_at_the_decision_positions():
  """Mean over valid slots with a noun of -log p(colour) and -log p(shape); slots without a noun
  (-1) or not valid are left out."""
  head = _head([1.0, 2.0, 0.5], [0.0, 1.0, -1.0, 3.0])
  hidden = jnp.zeros((1, 6, H))
  seg_index, seg_valid = jnp.asarray([[2, 4, 5]]), jnp.asarray([[True, True, False]])
  seg_target = jnp.asarray([[0, 1, 1]])
  gt_noun = jnp.asarray([[[1, 3], [-1, -1]]])
  got = float(noun_loss(head, hidden, seg_index, seg_valid, seg_target, gt_noun))
  logp = lambda x, i: np.log(np.exp(x[i]) / np.exp(x).sum())
  want = -(logp(np.asarray([1.0, 2.0, 0.5]), 1) + logp(np.asarray([0.0, 1.0, -1.0, 3.0]), 3)) / 2
  assert got == pytest.approx(want, rel=1e-5)


def test_noun_ids_of_the_world_expressions():
  any_colour, any_shape = len(sy.COLOURS), len(sy.SHAPES)
  colour, shape = list(sy.COLOURS).index, sy.SHAPES.index
  texts = ['the red circle left of the blue square', 'all circles', 'the largest green shape',
           'a yellow star', 'the diamond', 'all purple triangles']
  want = [(colour('red'), shape('circle')), (any_colour, shape('circle')),
          (colour('green'), any_shape), (colour('yellow'), shape('star')),
          (any_colour, shape('diamond')), (colour('purple'), shape('triangle')), (-1, -1)]
  assert sy.noun_ids(texts, 7).tolist() == [list(w) for w in want]
