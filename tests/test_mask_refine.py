"""The mask refiner starts as bilinear upsampling, corrects only inside its window around the
coarse mask, and learns to recover a sharp object outline from the image that a stride-4 mask
blurs."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from lira_jax.models.mask_refine import MaskRefiner
from lira_jax.nn.resize import resize_bilinear

SIDE, GRID = 32, 8


def _refiner(window=16, seed=0):
  cfg = ml_collections.ConfigDict(dict(channels=8, layers=3, window=window))
  return MaskRefiner(cfg, rngs=nnx.Rngs(seed))


def _scene(rng):
  """A disc of one colour on a grey background: pixels f32[S, S, 3] and its mask bool[S, S]."""
  yy, xx = np.mgrid[:SIDE, :SIDE]
  cy, cx = rng.uniform(10, 22, 2)
  mask = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(16, 36)
  pixels = np.where(mask[..., None], [1.5, -1.0, 0.5], [0.0, 0.2, -0.3])
  return (pixels + rng.normal(0, 0.1, pixels.shape)).astype(np.float32), mask


def _coarse(mask):
  """The stride-4 logits a perfect coarse decoder could give: f32[h, w] block averages."""
  frac = mask.reshape(GRID, SIDE // GRID, GRID, SIDE // GRID).mean((1, 3))
  return (8.0 * (frac - 0.5)).astype(np.float32)


def test_identity_at_initialisation():
  rng = np.random.default_rng(0)
  pixels, mask = _scene(rng)
  logits = jnp.asarray(_coarse(mask))[None]
  out = _refiner()(logits, jnp.asarray(pixels)[None], jnp.zeros((1,), jnp.int32))
  assert out.shape == (1, SIDE, SIDE)
  np.testing.assert_allclose(out, resize_bilinear(logits, (SIDE, SIDE)), atol=1e-6)


def test_correction_stays_inside_the_window_around_the_mask():
  refiner = _refiner(window=12)
  last = refiner.convs[-1]
  last.bias[...] = jnp.ones_like(last.bias[...])  # the correction is +1 wherever it applies
  logits = np.full((1, GRID, GRID), -6.0, np.float32)
  logits[0, 5:7, 1:3] = 6.0  # a blob at rows ~20-28, columns ~4-12 of the 32 x 32 map
  pixels = jnp.zeros((2, SIDE, SIDE, 3))
  out = refiner(jnp.asarray(logits), pixels, jnp.ones((1,), jnp.int32))
  delta = np.asarray(out - resize_bilinear(jnp.asarray(logits), (SIDE, SIDE)))[0]
  rows, cols = np.nonzero(np.abs(delta - 1.0) < 1e-5)
  assert delta[np.abs(delta - 1.0) >= 1e-5].max() < 1e-5  # zero outside the window
  assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (12, 12)
  upsampled = np.asarray(resize_bilinear(jnp.asarray(logits), (SIDE, SIDE)))[0]
  fg_rows, fg_cols = np.nonzero(upsampled > 0)
  assert rows.min() <= fg_rows.min() and rows.max() >= fg_rows.max()
  assert cols.min() <= fg_cols.min() and cols.max() >= fg_cols.max()


def test_learns_the_outline_the_coarse_mask_blurs():
  rng = np.random.default_rng(1)
  scenes = [_scene(rng) for _ in range(16)]
  pixels = jnp.asarray(np.stack([p for p, _ in scenes]))
  masks = np.stack([m for _, m in scenes])
  coarse = jnp.asarray(np.stack([_coarse(m) for m in masks]))
  index = jnp.arange(len(scenes), dtype=jnp.int32)
  target = jnp.asarray(masks, jnp.float32)
  refiner = _refiner()
  optimizer = nnx.Optimizer(refiner, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(refiner, optimizer):
    def loss_fn(r):
      return optax.sigmoid_binary_cross_entropy(r(coarse, pixels, index), target).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(refiner)
    optimizer.update(refiner, grads)
    return loss

  for _ in range(300):
    step(refiner, optimizer)

  def iou(logits):
    pred = np.asarray(logits) > 0
    return (pred & masks).sum() / (pred | masks).sum()

  before = iou(resize_bilinear(coarse, (SIDE, SIDE)))
  after = iou(refiner(coarse, pixels, index))
  assert before < 0.9
  assert after > before + 0.05, (before, after)
