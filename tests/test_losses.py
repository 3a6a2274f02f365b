"""LIRA losses vs independent PyTorch references: transformers' causal-LM loss, F.grid_sample, and
a re-implementation of mmdet's DiceLoss(naive, eps 1) / sigmoid CrossEntropyLoss with
weight_reduce_loss(avg_factor) as OMG-Seg's `llm_seg_loss` calls them."""
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss

import lira_jax  # noqa: F401
from lira_jax.train import losses


def loss_cfg(num_points=12544):
  return ml_collections.ConfigDict(dict(
      text_weight=1.0, dice_weight=0.5, bce_weight=2.0, num_points=num_points,
      oversample_ratio=3.0, importance_sample_ratio=0.75, proj_weight=10.0, dice_eps=1.0))


def torch_point_sample(maps, points):
  """mmcv point_sample: grid_sample on 2p − 1, align_corners=False, zero padding."""
  grid = torch.tensor(np.array(points, np.float32)) * 2.0 - 1.0
  out = F.grid_sample(torch.tensor(np.array(maps, np.float32))[:, None], grid[:, :, None],
                      align_corners=False)
  return out[:, 0, :, 0]


# ----------------------------------------------------------------------------------------- text

def _text_batch(rng, vocab=61):
  b, t = 3, 19
  logits = rng.normal(0, 3, (b, t, vocab)).astype(np.float32)
  labels = rng.integers(0, vocab, (b, t))
  labels[:, :5] = -100               # prompt / visual tokens
  labels[1, 12:] = -100              # right padding
  labels[2, 7:10] = -100             # a masked span in the middle
  return logits, labels


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_text_loss_matches_transformers(dtype):
  logits, labels = _text_batch(np.random.default_rng(0))
  logits_j = jnp.asarray(logits).astype(dtype)
  loss, num = jax.jit(losses.text_loss)(logits_j, jnp.asarray(labels, jnp.int32))
  tlogits = torch.tensor(np.asarray(logits_j.astype(jnp.float32)))
  if dtype == jnp.bfloat16:
    tlogits = tlogits.bfloat16()
  ref = ForCausalLMLoss(tlogits, torch.tensor(labels), vocab_size=logits.shape[-1])
  assert int(num) == int((labels[:, 1:] != -100).sum())
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6, atol=1e-6)


def test_text_loss_gradient_matches_torch():
  logits, labels = _text_batch(np.random.default_rng(1))
  grad = jax.grad(lambda x: losses.text_loss(x, jnp.asarray(labels, jnp.int32))[0])(
      jnp.asarray(logits))
  tlogits = torch.tensor(logits, requires_grad=True)
  ForCausalLMLoss(tlogits, torch.tensor(labels), vocab_size=logits.shape[-1]).backward()
  np.testing.assert_allclose(np.asarray(grad), tlogits.grad.numpy(), atol=1e-7)


def test_text_loss_token_weights_scale_that_tokens_nll():
  logits, labels = _text_batch(np.random.default_rng(2))
  token = int(labels[0, 8])
  targets = np.concatenate([labels[:, 1:], np.full((3, 1), -100)], axis=1)
  counted = targets != -100
  logp = torch.log_softmax(torch.tensor(logits), -1).numpy()
  nll = -np.take_along_axis(logp, np.where(counted, targets, 0)[..., None], -1)[..., 0]
  weight = np.where(targets == token, 2.5, 1.0)
  expected = (nll * weight)[counted].sum() / counted.sum()
  loss, num = losses.text_loss(jnp.asarray(logits), jnp.asarray(labels, jnp.int32),
                               ((token, 2.5),))
  assert (targets == token).any() and int(num) == counted.sum()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_text_loss_without_supervised_tokens_is_zero():
  loss, num = losses.text_loss(jnp.ones((2, 4, 7)), jnp.full((2, 4), -100, jnp.int32))
  assert float(loss) == 0.0 and int(num) == 0


# ---------------------------------------------------------------------------------- point sampling

@pytest.mark.parametrize('h,w', [(1024, 1024), (256, 256), (37, 53), (300, 177)])
def test_point_sample_matches_grid_sample(h, w):
  rng = np.random.default_rng(h * w)
  smooth = rng.normal(0, 5, (2, h, w)).astype(np.float32)
  binary = rng.random((2, h, w)) > 0.5
  # Slightly outside [0, 1] too, to exercise the zero padding.
  points = (rng.random((2, 3000, 2)) * 1.1 - 0.05).astype(np.float32)
  for maps in (smooth, binary):
    out = jax.jit(losses.point_sample)(jnp.asarray(maps), jnp.asarray(points))
    np.testing.assert_allclose(np.asarray(out), torch_point_sample(maps, points).numpy(),
                               rtol=0, atol=1e-6 * max(1.0, np.abs(maps).max() / 4))


@pytest.mark.parametrize('h,w', [(32, 32), (37, 53)])
def test_point_sample_gradient_matches_grid_sample(h, w):
  """point_sample's own VJP against PyTorch autograd of grid_sample (points partly off the map)."""
  rng = np.random.default_rng(h + w)
  maps = rng.normal(0, 3, (3, h, w)).astype(np.float32)
  points = (rng.random((3, 700, 2)) * 1.1 - 0.05).astype(np.float32)
  cot = rng.normal(0, 1, (3, 700)).astype(np.float32)
  grad = jax.jit(jax.grad(lambda m: jnp.sum(losses.point_sample(m, jnp.asarray(points)) * cot)))(
      jnp.asarray(maps))
  ref_maps = torch.tensor(maps, requires_grad=True)
  grid = torch.tensor(points) * 2.0 - 1.0
  out = F.grid_sample(ref_maps[:, None], grid[:, :, None], align_corners=False)[:, 0, :, 0]
  (out * torch.tensor(cot)).sum().backward()
  np.testing.assert_allclose(np.asarray(grad), ref_maps.grad.numpy(), rtol=0, atol=1e-5)


def test_most_uncertain_selects_the_top_set():
  rng = np.random.default_rng(2)
  # |logit| grows away from the curve y = x², so uncertainty ranks points by distance to it.
  yy, xx = np.meshgrid(np.linspace(0, 1, 48), np.linspace(0, 1, 40), indexing='ij')
  maps = np.stack([30 * (yy - xx ** 2), -20 * (xx - 0.3)]).astype(np.float32)
  candidates = rng.random((2, 600, 2)).astype(np.float32)
  chosen = np.asarray(losses.most_uncertain(jnp.asarray(maps), jnp.asarray(candidates), 150))
  uncertainty = -np.abs(torch_point_sample(maps, candidates).numpy())
  for i in range(2):
    top = set(np.argsort(-uncertainty[i], kind='stable')[:150].tolist())
    picked = {int(np.flatnonzero((candidates[i] == c).all(-1))[0]) for c in chosen[i]}
    assert picked == top


def test_uncertain_points_keeps_the_uncertain_band():
  # logit = 40 (x − 0.5): only points near x = 0.5 are uncertain.
  xs = np.linspace(0, 1, 64, dtype=np.float32)
  maps = jnp.asarray(np.broadcast_to(40 * (xs - 0.5), (3, 64, 64)))
  num_points = 2000
  pts = jax.jit(losses.uncertain_points, static_argnums=(2, 3, 4))(
      jax.random.key(0), maps, num_points, 3.0, 0.75)
  assert pts.shape == (3, num_points, 2)
  pts = np.asarray(pts)
  assert (pts >= 0).all() and (pts < 1).all()
  important, fresh = pts[:, :1500], pts[:, 1500:]
  # 1500 of 6000 uniform candidates: the most uncertain quarter, |logit| ≲ 40 · 0.125 (less at
  # the border, where the zero padding pulls logits towards 0).
  abs_logit = np.abs(torch_point_sample(np.asarray(maps), pts).numpy())
  assert abs_logit[:, :1500].max() < 40 * 0.14
  assert abs_logit[:, 1500:].max() > 40 * 0.4
  assert np.abs(important[..., 0] - 0.5).mean() < 0.07
  assert np.abs(fresh[..., 0] - 0.5).mean() > 0.2
  grad = jax.jit(jax.grad(
      lambda m: losses.uncertain_points(jax.random.key(0), m, 64, 3.0, 0.75).sum()))(maps)
  assert not np.asarray(grad).any()


# ------------------------------------------------------------------------------------------ masks

def mmdet_reference(pred_logits, gt_masks, points):
  """OMG-Seg llm_seg_loss with mmdet losses: per level, DiceLoss(use_sigmoid, naive, eps=1,
  loss_weight=5) with avg_factor N + 1e-4 and CrossEntropyLoss(use_sigmoid, loss_weight=5) with
  avg_factor N·P + 1e-4 (weight_reduce_loss adds float32 eps); then × 0.1 / × 0.4 and the
  levels summed."""
  eps32 = torch.finfo(torch.float32).eps
  gt = torch.as_tensor(np.asarray(gt_masks, np.float32))
  dice_total, bce_total = 0.0, 0.0
  for level in range(pred_logits.shape[0]):
    pred = torch_point_sample(pred_logits[level], points[level])
    target = F.grid_sample(gt[:, None], torch.as_tensor(points[level])[:, :, None] * 2.0 - 1.0,
                           align_corners=False)[:, 0, :, 0]
    n, p = pred.shape
    prob = pred.sigmoid()
    d = 1 - (2 * (prob * target).sum(1) + 1.0) / (prob.sum(1) + target.sum(1) + 1.0)
    dice = d.sum() / ((n + 1e-4) + eps32) * 5.0
    bce = F.binary_cross_entropy_with_logits(pred.reshape(-1), target.reshape(-1),
                                             reduction='none')
    bce = bce.sum() / ((n * p + 1e-4) + eps32) * 5.0
    dice_total, bce_total = dice_total + 0.1 * dice, bce_total + 0.4 * bce
  return float(dice_total), float(bce_total)


def _mask_case(rng, levels=3, n=5, h=20, w=24, gh=70, gw=60, p=200):
  logits = rng.normal(0, 3, (levels, n, h, w)).astype(np.float32)
  yy, xx = np.mgrid[:gh, :gw]
  gt = np.stack([(yy - rng.uniform(0, gh)) ** 2 + (xx - rng.uniform(0, gw)) ** 2
                 < rng.uniform(100, 900) for _ in range(n)])
  points = rng.random((levels, n, p, 2)).astype(np.float32)
  return logits, gt, points


def test_mask_losses_at_points_match_mmdet():
  logits, gt, points = _mask_case(np.random.default_rng(3))
  valid = np.array([True, False, True, True, False])
  out = jax.jit(functools.partial(losses.mask_losses_at_points, loss_cfg=loss_cfg()))(
      jnp.asarray(logits), jnp.asarray(gt), jnp.asarray(points), jnp.asarray(valid))
  dice, bce = mmdet_reference(logits[:, valid], gt[valid], points[:, valid])
  assert float(out['num_seg']) == 3
  np.testing.assert_allclose(float(out['dice']), dice, rtol=1e-5)
  np.testing.assert_allclose(float(out['bce']), bce, rtol=1e-5)


def test_rej_and_padding_slots_contribute_nothing():
  logits, gt, points = _mask_case(np.random.default_rng(4))
  valid = jnp.array([True, False, True, False, False])
  fn = jax.jit(functools.partial(losses.mask_losses, loss_cfg=loss_cfg(64)))
  key = jax.random.key(7)
  base = fn(key, jnp.asarray(logits), jnp.asarray(gt), valid)
  # Different content in the invalid slots (a [REJ] target has an empty GT and unused logits).
  logits2, gt2 = logits.copy(), gt.copy()
  logits2[:, ~np.asarray(valid)] = 1e4
  gt2[~np.asarray(valid)] = False
  other = fn(key, jnp.asarray(logits2), jnp.asarray(gt2), valid)
  for k in ('dice', 'bce', 'num_seg'):
    assert float(base[k]) == float(other[k])
  assert float(base['num_seg']) == 2
  none = fn(key, jnp.asarray(logits), jnp.asarray(gt), jnp.zeros(5, bool))
  assert float(none['dice']) == 0.0 and float(none['bce']) == 0.0


def test_mask_gradients_finite_and_zero_on_invalid_slots():
  logits, gt, _ = _mask_case(np.random.default_rng(5))
  valid = jnp.array([True, True, False, True, False])

  def total(x):
    out = losses.mask_losses(jax.random.key(1), x, jnp.asarray(gt), valid, loss_cfg(64))
    return out['dice'] + out['bce']

  grad = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(logits)))
  assert np.isfinite(grad).all()
  assert not grad[:, ~np.asarray(valid)].any()
  assert np.abs(grad[:, np.asarray(valid)]).sum() > 0


def test_mask_losses_compile_once_for_any_number_of_valid_segments():
  logits, gt, _ = _mask_case(np.random.default_rng(6))
  traces = []

  def fn(key, x, g, v):
    traces.append(1)
    return losses.mask_losses(key, x, g, v, loss_cfg(64))

  jitted = jax.jit(fn)
  for count in (0, 1, 3, 5):
    valid = jnp.arange(5) < count
    out = jitted(jax.random.key(count), jnp.asarray(logits), jnp.asarray(gt), valid)
    assert float(out['num_seg']) == count
  assert len(traces) == 1


def test_mask_losses_real_size_weights():
  # At logit 0 every point costs BCE ln 2 and, against an empty GT, Dice 1 − 1/(P/2 + 1),
  # wherever the points land: checks the 12544 points, the weights and the sum over 10 levels.
  levels, n, p = 10, 3, 12544
  valid = jnp.array([True, True, False])
  out = jax.jit(functools.partial(losses.mask_losses, loss_cfg=loss_cfg()))(
      jax.random.key(0), jnp.zeros((levels, n, 256, 256)), jnp.zeros((n, 1024, 1024), bool),
      valid)
  eps32 = float(np.finfo(np.float32).eps)
  dice = 0.5 * levels * 2 * (1 - 1 / (p / 2 + 1)) / (2 + 1e-4 + eps32)
  bce = 2.0 * levels * 2 * p * math.log(2) / (2 * p + 1e-4 + eps32)
  np.testing.assert_allclose(float(out['dice']), dice, rtol=1e-5)
  np.testing.assert_allclose(float(out['bce']), bce, rtol=1e-5)


# ----------------------------------------------------------------------------- projection, total

def test_projection_loss_matches_torch_mse():
  rng = np.random.default_rng(8)
  pred, target = rng.normal(size=(2, 7, 16)).astype(np.float32), rng.normal(
      size=(2, 7, 16)).astype(np.float32)
  valid = rng.random((2, 7)) > 0.4
  full = losses.projection_loss(jnp.asarray(pred), jnp.asarray(target))
  np.testing.assert_allclose(
      float(full), 10 * float(F.mse_loss(torch.tensor(pred), torch.tensor(target))), rtol=1e-6)
  masked = losses.projection_loss(jnp.asarray(pred), jnp.asarray(target), 10.0, jnp.asarray(valid))
  ref = 10 * F.mse_loss(torch.tensor(pred[valid]), torch.tensor(target[valid]))
  np.testing.assert_allclose(float(masked), float(ref), rtol=1e-6)
  empty = losses.projection_loss(jnp.asarray(pred), jnp.asarray(target), 10.0,
                                 jnp.zeros((2, 7), bool))
  assert float(empty) == 0.0


def test_total_loss_sums_weighted_parts():
  cfg = loss_cfg()
  cfg.text_weight = 2.0
  total, logged = losses.total_loss(
      dict(text=jnp.float32(1.5), dice=jnp.float32(0.25), bce=jnp.float32(0.5),
           num_seg=jnp.float32(4)), cfg)
  assert float(total) == 3.75
  assert float(logged['text']) == 3.0 and float(logged['num_seg']) == 4
