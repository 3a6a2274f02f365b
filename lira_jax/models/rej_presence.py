"""A presence score for [REJ] (not in LIRA or GSVA; only configs/tiny_synthetic.py's stage 2 uses
it): the [REJ]-vs-[SEG] decision gets an offset from reading the frozen panoptic class map for the
noun the LLM state is about.

Why: from scratch, the LLM does not learn to look an object up among its image tokens (README
"The main job", sessions 16 and 22), while the class map read with no learning tells absent from
present nouns with N-acc 0.89 at T-acc 0.89 on the synthetic GRES val split (session 22: with
this head, N-acc 0.18 -> 0.78 at T-acc 0.91 -> 0.97). Here two heads on
the LLM state name the noun's colour and shape (each may be 'any'; supervised at the decision
positions, `noun_loss`), and

  fit_q    = sum_{c,s} (p_col[c] + p_col[any]) (p_shape[s] + p_shape[any]) P_q(c, s)
  absent   = 1 - max_q fit_q          over the queries whose best class beats background
  offset   = alpha * (log absent - log(1 - absent)) + beta,   +offset/2 on [REJ], -offset/2 on [SEG]

P_q(c, s): query q's class probabilities without background (classes are colour x shape,
row-major). Splitting the offset between [REJ] and [SEG] keeps it out of every other position's
loss (both are unlikely there).

Axis letters: B batch, L sequence, Q object queries, H LLM hidden, C colours, S shapes, M slots.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lira_jax.nn.layers import Linear

_EPS = 1e-4


class RejPresence(nnx.Module):

  def __init__(self, hidden: int, class_factors: tuple[int, int], *, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32):
    mods = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.class_factors = tuple(class_factors)
    colours, shapes = self.class_factors
    self.colour_head = Linear(hidden, colours + 1, axes=('embed', None), **mods)
    self.shape_head = Linear(hidden, shapes + 1, axes=('embed', None), **mods)
    self.alpha = nnx.Param(jnp.ones((), param_dtype), out_sharding=())
    self.beta = nnx.Param(jnp.zeros((), param_dtype), out_sharding=())

  def noun_logits(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
    """f32[..., H] -> (colour f32[..., C+1], shape f32[..., S+1]); the last entry is 'any'."""
    return self.colour_head(hidden), self.shape_head(hidden)

  def __call__(self, hidden: jax.Array, class_logits: jax.Array) -> jax.Array:
    """hidden f32[B, L, H], class_logits f32[B, Q, C·S+1] (background last) -> offset f32[B, L]."""
    pc, ps = (jax.nn.softmax(x.astype(jnp.float32), axis=-1) for x in self.noun_logits(hidden))
    fit = noun_fit(pc, ps, class_logits, self.class_factors)
    confident = class_logits[..., :-1].max(-1) > class_logits[..., -1]
    best = jnp.clip(jnp.max(jnp.where(confident[:, None, :], fit, 0.0), axis=-1), _EPS, 1 - _EPS)
    return self.alpha[...] * (jnp.log1p(-best) - jnp.log(best)) + self.beta[...]


def noun_fit(colour_probs: jax.Array, shape_probs: jax.Array, class_logits: jax.Array,
             class_factors: tuple[int, int]) -> jax.Array:
  """How well each query's class fits a noun: colour_probs f32[B, L, C+1], shape_probs
  f32[B, L, S+1] ('any' last), class_logits f32[B, Q, C·S+1] (background last; classes are
  colour x shape, row-major) -> fit f32[B, L, Q] in [0, 1]."""
  colours, shapes = class_factors
  wc = colour_probs[..., :-1] + colour_probs[..., -1:]
  ws = shape_probs[..., :-1] + shape_probs[..., -1:]
  probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)
  things = probs[..., :-1] / jnp.maximum(1.0 - probs[..., -1:], _EPS)
  things = things.reshape(*things.shape[:2], colours, shapes)
  return jnp.einsum('blc,bls,bqcs->blq', wc, ws, things)


def noun_loss(head, hidden: jax.Array, seg_index: jax.Array, seg_valid: jax.Array,
              seg_target: jax.Array, gt_noun: jax.Array, *, before: int = 1) -> jax.Array:
  """Cross-entropy of a head's `noun_logits` (RejPresence's, SegSelect's) at `before` positions
  before each [SEG]/[REJ] slot (1: where the decision is made; 0: the slot itself).
  hidden f32[B, L, H]; seg_index / seg_target i32[B, M], seg_valid bool[B, M];
  gt_noun i32[B, K, 2] (colour, shape; the factor count for 'any'; -1: no noun)."""
  pos = jnp.maximum(seg_index - before, 0)
  states = jnp.take_along_axis(hidden, pos[..., None], axis=1)
  noun = jnp.take_along_axis(gt_noun, jnp.clip(seg_target, 0, gt_noun.shape[1] - 1)[..., None],
                             axis=1)
  total, count = 0.0, 0.0
  for logits, target in zip(head.noun_logits(states), (noun[..., 0], noun[..., 1])):
    keep = seg_valid & (target >= 0)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(target, 0)[..., None], axis=-1)[..., 0]
    total += jnp.sum(jnp.where(keep, nll, 0.0))
    count += jnp.sum(keep)
  return total / jnp.maximum(count, 1.0)
