"""The region classifier (lira_jax/models/region_classify.py): its crops against a ramp image
sampled by hand, its class map against probabilities multiplied out by hand, its loss against a
plain cross-entropy over the queries matched by hand, and the stage-2 stream carrying its
labels."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lira_jax  # noqa: F401
from configs import common
from lira_jax.data import pipeline, synthetic
from lira_jax.data.synthetic_tokenizer import world_tokenizer
from lira_jax.models import region_classify as rc

COLOURS, SHAPES = 2, 3


def test_crops_resample_the_box_around_each_mask():
  """A 64-pixel image whose channels are y, x and y + 2x (bilinear sampling reproduces a linear
  function exactly away from the border), masks on a 16 x 16 grid (stride 4)."""
  side, grid, k = 64, 16, 8
  yy, xx = np.meshgrid(np.arange(side) + 0.5, np.arange(side) + 0.5, indexing='ij')
  image = np.stack([yy, xx, yy + 2 * xx], -1).astype(np.float32)[None]
  masks = np.full((1, 2, grid, grid), -8.0, np.float32)
  masks[0, 0, 4:8, 6:8] = 8.0  # rows 4-7, cols 6-7: box 16 x 8 px at (16, 24) -> square 16
  crops = np.asarray(rc.region_crops(jnp.asarray(image), jnp.asarray(masks), k))
  assert crops.shape == (1, 2, k, k, 4)
  centre, half = (24.0, 28.0), 16 * 1.25 / 2 + 1
  steps = (np.arange(k) + 0.5) / k * 2 - 1
  ys, xs = centre[0] + steps * half, centre[1] + steps * half
  np.testing.assert_allclose(crops[0, 0, :, 0, 0], ys, atol=1e-4)
  np.testing.assert_allclose(crops[0, 0, 0, :, 1], xs, atol=1e-4)
  np.testing.assert_allclose(crops[0, 0, ..., 2], ys[:, None] + 2 * xs[None], atol=1e-3)
  # The mask channel: tanh(8 / 4) inside the box, tanh(-8 / 4) well outside.
  assert crops[0, 0, k // 2, k // 2, 3] == pytest.approx(np.tanh(2.0), abs=1e-5)
  assert crops[0, 0, 0, 0, 3] == pytest.approx(np.tanh(-2.0), abs=1e-5)
  # An empty mask crops the whole image.
  whole = (np.arange(k) + 0.5) / k * side
  np.testing.assert_allclose(crops[0, 1, :, 0, 0], whole, atol=1e-4)


def test_class_map_is_the_product_of_both_experts_with_background_kept():
  rng = np.random.default_rng(1)
  colour = rng.normal(size=(1, 1, COLOURS)).astype(np.float32)
  shape = rng.normal(size=(1, 1, SHAPES)).astype(np.float32)
  frozen = rng.normal(size=(1, 1, COLOURS * SHAPES + 1)).astype(np.float32)
  out = np.asarray(rc.region_class_logits(jnp.asarray(colour), jnp.asarray(shape),
                                          jnp.asarray(frozen)))[0, 0]
  probs = np.exp(out)
  softmax = lambda x: np.exp(x) / np.exp(x).sum()
  p_frozen = softmax(frozen[0, 0].astype(np.float64))
  product = p_frozen[:-1] * np.outer(softmax(colour[0, 0]), softmax(shape[0, 0])).reshape(-1)
  np.testing.assert_allclose(probs[:-1], (1 - p_frozen[-1]) * product / product.sum(),
                             rtol=1e-5)
  assert probs[-1] == pytest.approx(p_frozen[-1], rel=1e-5)
  assert probs.sum() == pytest.approx(1.0, rel=1e-5)


def test_loss_is_cross_entropy_on_the_queries_that_cover_an_object():
  """Query 0 covers object 1 (IoU 1), query 1 half of object 0 (IoU 0.5: labelled), query 2
  overlaps nothing enough (not labelled)."""
  grid = 8
  pan = np.zeros((1, 3, grid, grid), np.float32)
  pan[0, 0, 0:4, 0:4] = 1.0
  pan[0, 1, 4:8, 4:8] = 1.0
  classes = np.asarray([[1 * SHAPES + 2, 0 * SHAPES + 1, 0]])
  valid = np.asarray([[True, True, False]])
  q = np.full((1, 3, grid, grid), -1.0, np.float32)
  q[0, 0, 4:8, 4:8] = 1.0
  q[0, 1, 0:4, 0:2] = 1.0
  q[0, 2, 0:1, 6:8] = 1.0
  rng = np.random.default_rng(0)
  colour = rng.normal(size=(1, 3, COLOURS)).astype(np.float32)
  shape = rng.normal(size=(1, 3, SHAPES)).astype(np.float32)
  got = float(rc.region_class_loss(jnp.asarray(colour), jnp.asarray(shape), jnp.asarray(q),
                                   jnp.asarray(pan), jnp.asarray(classes), jnp.asarray(valid),
                                   shapes=SHAPES))
  nll = lambda x, i: -(x[i] - np.log(np.exp(x).sum()))
  want = (nll(colour[0, 0], 0) + nll(shape[0, 0], 1) + nll(colour[0, 1], 1)
          + nll(shape[0, 1], 2)) / 2
  assert got == pytest.approx(want, rel=1e-5)


def test_classifier_output_shapes():
  cfg = common.load_config('configs/tiny_synthetic.py:smoke,stage2')
  clf = rc.RegionClassifier(cfg.model.region_classify, (COLOURS, SHAPES), rngs=nnx.Rngs(0))
  colour, shape = clf(jnp.zeros((2, 32, 32, 3)), jnp.zeros((2, 5, 8, 8)))
  assert colour.shape == (2, 5, COLOURS) and shape.shape == (2, 5, SHAPES)


def test_stage2_stream_carries_every_object_of_the_scene():
  cfg = common.load_config('configs/tiny_synthetic.py:smoke,stage2')
  tokenizer = world_tokenizer(synthetic.vocabulary_texts(), cfg.tokens)
  element = pipeline._encode(synthetic.make_sample('train', 3, size=cfg.data.image_size),
                             cfg=cfg, tokenizer=tokenizer)
  scene = synthetic.make_sample('train', 3, size=cfg.data.image_size).scene
  assert element['pan_valid'].sum() == len(scene.objects)
  assert element['pan_masks'].shape[0] == cfg.data.max_objects
  off = common.load_config('configs/tiny_synthetic.py:smoke,stage1')  # no labels to learn
  assert 'pan_masks' not in pipeline._encode(
      synthetic.make_sample('train', 3, size=off.data.image_size), cfg=off, tokenizer=tokenizer)
