"""LIRA training losses as released (lira_reference.md §10, §15; GSVA [REJ]: evaluation.md §1.5).

- text: HF causal-LM cross-entropy (logit at t predicts label t+1, -100 ignored, mean over the
  supervised tokens of the whole batch).
- mask: per decoder prediction level, PointRend point sampling (mmdet
  `get_uncertain_point_coords_with_randomness` + mmcv `point_sample`) then mmdet's naive Dice
  (eps 1) and sigmoid BCE, divided by the real number of masks; summed over levels.
- proj: stage-1 `10 · mean((pred − gt)²)`.

Static shapes: masks live in a fixed [SEG] buffer with `seg_valid`; padding and [REJ] slots
contribute exactly zero and are not counted in the divisors.

Shape letters: B batch, T sequence, V vocabulary, L prediction levels, N [SEG] slots, P points.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import lira_jax  # noqa: F401  (disables eager sharding)

IGNORE_INDEX = -100
# mmdet's weight_reduce_loss adds float32 eps to every avg_factor.
_F32_EPS = float(np.finfo(np.float32).eps)
# The reference passes avg_factor = count + 1e-4 (OMG-Seg `llm_seg_loss`).
_AVG_OFFSET = 1e-4
# Keys of `total_loss` parts that are losses; anything else is passed through for logging.
LOSS_KEYS = ('text', 'dice', 'bce', 'proj', 'cls', 'pointer', 'refine', 'noun', 'select', 'region')


# ----------------------------------------------------------------------------------------- text

def token_nll(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token causal-LM negative log-likelihood: logits f32/bf16[B, T, V], labels i32[B, T]
  (un-shifted, -100 = ignored) -> (nll f32[B, T], zero where not supervised; valid bool[B, T]).
  Position t scores label t + 1, in float32."""
  targets = next_labels(labels)
  valid = targets != IGNORE_INDEX
  logits = logits.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
  return jnp.where(valid, jax.nn.logsumexp(logits, axis=-1) - picked, 0.0), valid


def next_labels(labels: jax.Array) -> jax.Array:
  """labels i32[B, T] -> the label each position predicts, i32[B, T] (IGNORE_INDEX last).
  Shifting the labels left instead of slicing the logits avoids copying the [B, T, V] array."""
  return jnp.concatenate(
      [labels[:, 1:], jnp.full((labels.shape[0], 1), IGNORE_INDEX, labels.dtype)], axis=1)


def text_loss(logits: jax.Array, labels: jax.Array,
              token_weights: Sequence[tuple[int, float]] = ()) -> tuple[jax.Array, jax.Array]:
  """Causal-LM cross-entropy: logits f32/bf16[B, T, V], labels i32[B, T] (un-shifted, -100 =
  ignored) -> (loss f32[], num_tokens i32[]).

  Mean over all supervised tokens of the batch, computed in float32. With no supervised token the
  loss is 0 (HF would return NaN). token_weights: (token id, w) pairs; the NLL of predicting
  that token is scaled by w (the mean is still over the supervised token count).
  """
  nll, valid = token_nll(logits, labels)
  if token_weights:
    targets = next_labels(labels)
    for token, weight in token_weights:
      nll = jnp.where(targets == token, weight * nll, nll)
  num_tokens = valid.sum()
  return nll.sum() / jnp.maximum(num_tokens, 1), num_tokens


# ---------------------------------------------------------------------------------- point sampling

def _bit_split(x):
  """(hi, lo) with x == hi + lo exactly and at most 12 significant bits in each, so products of
  two halves are exact in float32. For traced arrays and Python/NumPy constants."""
  if isinstance(x, jax.Array):
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32) & jnp.uint32(0xFFFFF000)
    hi = jax.lax.bitcast_convert_type(bits, jnp.float32)
  else:
    x = np.asarray(x, np.float32)
    hi = (x.view(np.uint32) & np.uint32(0xFFFFF000)).view(np.float32)
  return hi, x - hi


def _two_sum(a, b):
  """Knuth's error-free sum: (s, e) with s = fl(a + b) and a + b == s + e exactly."""
  s = a + b
  v = s - a
  return s, (a - (s - v)) + (b - v)


def _fused_scale_shift(x: jax.Array, scale: float, shift: float) -> jax.Array:
  """float32 round(x * scale + shift) with a single rounding, like a fused multiply-add.

  PyTorch's CPU grid_sample unnormalises with an FMA; the separately rounded product is one ulp
  off for sizes that are not powers of two, which moves a sample by up to ulp(size) and changes
  values next to mask edges by ~1e-5. Built from exact half-products and error-free sums (no
  multiply-add pattern is inexact), so it does not depend on the compiler contracting or not.
  """
  x_hi, x_lo = _bit_split(x)
  s_hi, s_lo = _bit_split(scale)
  total, err = _two_sum(x_hi * s_hi, jnp.float32(shift))
  total, err2 = _two_sum(total, x_lo * s_hi)
  return total + ((err + err2) + (x_hi * s_lo + x_lo * s_lo))


def point_sample(maps: jax.Array, points: jax.Array) -> jax.Array:
  """mmcv `point_sample`: maps [N, h, w] (any dtype, e.g. bool GT), points f32[N, P, 2] in [0, 1]
  as (x, y) -> f32[N, P].

  Equals F.grid_sample(maps[:, None], 2·points − 1, 'bilinear', padding_mode='zeros',
  align_corners=False): taps outside the map read zero. Differentiable in float maps; the points
  get no gradient.
  """
  n, h, w = maps.shape
  index, weight = _bilinear_taps(points, h, w)
  return _weighted_taps(maps.reshape(n, h * w), index, weight)


def _bilinear_taps(points: jax.Array, h: int, w: int) -> tuple[jax.Array, jax.Array]:
  """The four taps of each point: (flat index i32[4, N, P], weight f32[4, N, P]); a tap outside
  the map weighs zero."""
  grid = points.astype(jnp.float32) * 2.0 - 1.0
  # align_corners=False: pixel centres at (i + 0.5) / size.
  ix = _fused_scale_shift(grid[..., 0] + 1.0, w / 2, -0.5)
  iy = _fused_scale_shift(grid[..., 1] + 1.0, h / 2, -0.5)
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  index, weight = [], []
  for xi, wx in ((x0, (x0 + 1) - ix), (x0 + 1, ix - x0)):
    for yi, wy in ((y0, (y0 + 1) - iy), (y0 + 1, iy - y0)):
      inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
      index.append((jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32))
      weight.append(jnp.where(inside, wx * wy, 0.0))
  return jnp.stack(index), jnp.stack(weight)


def _sum_taps(flat: jax.Array, index: jax.Array, weight: jax.Array) -> jax.Array:
  out = jnp.zeros(weight.shape[1:], jnp.float32)
  for tap_index, tap_weight in zip(index, weight):
    out = out + jnp.take_along_axis(flat, tap_index, axis=1).astype(jnp.float32) * tap_weight
  return out


# A VJP of its own so that the backward reads the taps computed once in the forward: autodiff
# let XLA recompute the error-free unnormalisation inside each of the four taps' backward
# fusions, 10 ms of the tiny default's 185 ms stage-2 step on 2 CPU cores.
@jax.custom_vjp
def _weighted_taps(flat: jax.Array, index: jax.Array, weight: jax.Array) -> jax.Array:
  """flat [N, h·w], index i32[4, N, P], weight f32[4, N, P] -> f32[N, P]."""
  return _sum_taps(flat, index, weight)


def _weighted_taps_bwd(res, g):
  flat, index, weight = res
  if not jnp.issubdtype(flat.dtype, jnp.floating):
    return None, None, None
  # Materialised once: XLA otherwise recomputes the loss's elementwise gradient in each tap.
  g, index, weight = jax.lax.optimization_barrier((g, index, weight))
  rows = jnp.arange(flat.shape[0])[:, None]
  d_flat = jnp.zeros(flat.shape, jnp.float32)
  for tap_index, tap_weight in zip(index, weight):
    d_flat = d_flat.at[rows, tap_index].add(g * tap_weight)
  return d_flat.astype(flat.dtype), None, None


_weighted_taps.defvjp(lambda flat, index, weight: (_sum_taps(flat, index, weight),
                                                   (flat, index, weight)),
                      _weighted_taps_bwd)


def most_uncertain(mask_logits: jax.Array, candidates: jax.Array, num: int) -> jax.Array:
  """The `num` candidates f32[N, S, 2] with the largest uncertainty −|logit| (logits bilinearly
  sampled from mask_logits [N, h, w]) -> f32[N, num, 2]."""
  uncertainty = -jnp.abs(point_sample(mask_logits, candidates))
  _, index = jax.lax.top_k(uncertainty, num)
  return jnp.take_along_axis(candidates, index[..., None], axis=1)


def uncertain_points(rng: jax.Array, mask_logits: jax.Array, num_points: int,
                     oversample_ratio: float, importance_ratio: float) -> jax.Array:
  """PointRend training points for mask_logits [N, h, w] -> f32[N, num_points, 2] in [0, 1).

  Draws int(num_points · oversample_ratio) uniform candidates per mask, keeps the
  int(importance_ratio · num_points) most uncertain and appends fresh uniform points for the
  rest. No gradient flows through the choice.
  """
  n = mask_logits.shape[0]
  num_candidates = int(num_points * oversample_ratio)
  num_uncertain = int(importance_ratio * num_points)
  cand_rng, fresh_rng = jax.random.split(rng)
  candidates = jax.random.uniform(cand_rng, (n, num_candidates, 2), jnp.float32)
  chosen = most_uncertain(jax.lax.stop_gradient(mask_logits), candidates, num_uncertain)
  fresh = jax.random.uniform(fresh_rng, (n, num_points - num_uncertain, 2), jnp.float32)
  return jnp.concatenate([chosen, fresh], axis=1)


# ------------------------------------------------------------------------------------------ masks

def _bce_with_logits(x: jax.Array, t: jax.Array) -> jax.Array:
  return jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))


def mask_losses_at_points(mask_logits: jax.Array, gt_masks: jax.Array, points: jax.Array,
                          seg_valid: jax.Array, loss_cfg) -> dict[str, jax.Array]:
  """Weighted Dice and BCE at given points.

  mask_logits [L, N, h, w] (one map per decoder prediction level), gt_masks [N, Hg, Wg] (binary,
  any dtype), points f32[L, N, P, 2], seg_valid bool[N] (False: padding or [REJ]).
  Returns dict(dice=dice_weight · Σ_L Dice_L, bce=bce_weight · Σ_L BCE_L, num_seg=f32[]), where
  Dice_L = Σ_valid (1 − (2Σpt + eps)/(Σp + Σt + eps)) / (N_seg + 1e-4) and
  BCE_L = Σ_valid Σ_P bce / (N_seg · P + 1e-4).
  """
  levels, n, h, w = mask_logits.shape
  num_points = points.shape[2]
  pred = point_sample(mask_logits.reshape(levels * n, h, w),
                      points.reshape(levels * n, num_points, 2)).reshape(levels, n, num_points)
  # Every level's points are read from the one GT map per mask instead of L copies of it.
  gt_points = points.transpose(1, 0, 2, 3).reshape(n, levels * num_points, 2)
  target = point_sample(gt_masks, gt_points).reshape(n, levels, num_points).transpose(1, 0, 2)
  target = jax.lax.stop_gradient(target)

  prob = jax.nn.sigmoid(pred)
  eps = loss_cfg.dice_eps
  dice = 1.0 - (2.0 * (prob * target).sum(-1) + eps) / (prob.sum(-1) + target.sum(-1) + eps)
  bce = _bce_with_logits(pred, target).sum(-1)
  valid = seg_valid[None, :]
  num_seg = seg_valid.sum().astype(jnp.float32)
  dice = jnp.where(valid, dice, 0.0).sum() / (num_seg + _AVG_OFFSET + _F32_EPS)
  bce = jnp.where(valid, bce, 0.0).sum() / (num_seg * num_points + _AVG_OFFSET + _F32_EPS)
  return dict(dice=loss_cfg.dice_weight * dice, bce=loss_cfg.bce_weight * bce, num_seg=num_seg)


def mask_losses(rng: jax.Array, mask_logits: jax.Array, gt_masks: jax.Array,
                seg_valid: jax.Array, loss_cfg) -> dict[str, jax.Array]:
  """`mask_losses_at_points` at points drawn independently for every level and mask by
  `uncertain_points` (cfg: num_points, oversample_ratio, importance_sample_ratio).

  mask_logits [L, N, h, w], gt_masks [N, Hg, Wg], seg_valid bool[N].
  """
  levels, n, h, w = mask_logits.shape
  points = uncertain_points(rng, mask_logits.reshape(levels * n, h, w), loss_cfg.num_points,
                            loss_cfg.oversample_ratio, loss_cfg.importance_sample_ratio)
  points = points.reshape(levels, n, loss_cfg.num_points, 2)
  return mask_losses_at_points(mask_logits, gt_masks, points, seg_valid, loss_cfg)


# ----------------------------------------------------------------------------- projection, total

def projection_loss(pred: jax.Array, target: jax.Array, weight: float = 10.0,
                    valid: jax.Array | None = None) -> jax.Array:
  """weight · mean((pred − target)²) over pred/target f32[..., M, C]; with valid bool[..., M] the
  mean runs over the valid rows only (the reference concatenates only kept queries). 0 when no
  row is valid."""
  sq = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  if valid is None:
    return weight * sq.mean()
  count = valid.sum() * sq.shape[-1]
  return weight * jnp.where(valid[..., None], sq, 0.0).sum() / jnp.maximum(count, 1)


def total_loss(parts: Mapping[str, jax.Array], loss_cfg
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(total, logged) from parts: 'text' = unweighted `text_loss`; optional 'dice', 'bce' (from
  `mask_losses` or the panoptic loss), 'proj' (from `projection_loss`), 'cls' (panoptic),
  'pointer', 'refine', 'noun' (rej_presence.noun_loss), 'select' (seg_select) and 'region'
  (region_classify) already carry their weights; other
  entries (counts) pass through to `logged`.
  `logged['text']` is the weighted text term."""
  logged = dict(parts)
  if 'text' in parts:
    logged['text'] = loss_cfg.text_weight * parts['text']
  total = sum(logged[k] for k in LOSS_KEYS if k in logged)
  return total, logged
