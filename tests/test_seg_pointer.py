"""The [SEG] pointer loss picks the panoptic query that covers a slot's single-object target, none
for a multi-object, empty or invalid slot, and stops the gradient at the query vectors."""
import jax
import jax.numpy as jnp
import numpy as np

from lira_jax.train.seg_pointer import pointer_loss, pointer_targets

GRID, SIDE = 8, 32  # stride-4 mask grid, GT side


def _box(y0, x0, y1, x1, side):
  m = np.zeros((side, side), np.float32)
  m[y0:y1, x0:x1] = 1
  return m


def _world():
  """Two images, three queries each: query q of image b covers box (b, q); boxes in grid cells."""
  boxes = {(0, 0): (0, 0, 4, 4), (0, 1): (4, 4, 8, 8), (0, 2): (0, 4, 2, 8),
           (1, 0): (2, 2, 6, 6), (1, 1): (6, 0, 8, 8), (1, 2): (0, 0, 1, 1)}
  logits = np.full((2, 3, GRID, GRID), -5.0, np.float32)
  for (b, q), (y0, x0, y1, x1) in boxes.items():
    logits[b, q, y0:y1, x0:x1] = 5.0
  feat = np.arange(2 * 3 * 6, dtype=np.float32).reshape(2, 3, 6)
  up = SIDE // GRID
  gt_box = lambda b, q: _box(*(up * v for v in boxes[b, q]), SIDE)
  # Slots (M = 3 per image): image 0 -> query 1, all three objects (no single query), padding;
  # image 1 -> query 0 with a pixel of noise, empty target, query 2 (invalid slot).
  all_three = np.max([gt_box(0, q) for q in range(3)], axis=0)
  gt = np.stack([gt_box(0, 1), all_three, gt_box(0, 2),
                 gt_box(1, 0), np.zeros((SIDE, SIDE), np.float32), gt_box(1, 2)])
  gt[3, 0, 0] = 1
  valid = np.array([True, True, False, True, True, False])
  return logits, feat, gt, valid


def test_pointer_targets_pick_the_covering_query():
  logits, feat, gt, valid = _world()
  target, has = jax.device_get(pointer_targets(jnp.asarray(logits), jnp.asarray(feat),
                                               jnp.asarray(gt), jnp.asarray(valid), 0.5))
  np.testing.assert_array_equal(has, [True, False, False, True, False, False])
  np.testing.assert_array_equal(target[0], feat[0, 1])
  np.testing.assert_array_equal(target[3], feat[1, 0])


def test_pointer_loss_is_weighted_mse_on_pointed_slots_with_stopped_target():
  logits, feat, gt, valid = _world()
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(6, 6)).astype(np.float32)

  def loss(q, f):
    value, count = pointer_loss(q, jnp.asarray(logits), f, jnp.asarray(gt), jnp.asarray(valid),
                                weight=3.0, min_iou=0.5)
    return value, count

  (value, count), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      jnp.asarray(queries), jnp.asarray(feat))
  expected = 3.0 * np.mean(np.square(np.stack([queries[0] - feat[0, 1],
                                               queries[3] - feat[1, 0]])))
  assert int(count) == 2
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  assert np.all(np.asarray(grads[1]) == 0)
  assert np.all(np.asarray(grads[0])[[1, 2, 4, 5]] == 0) and np.any(np.asarray(grads[0])[0])
