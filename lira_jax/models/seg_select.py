"""[SEG] object selection (not in LIRA; only configs/tiny_synthetic.py's stage 2 uses it): each
[SEG] scores the frozen panoptic queries and decodes from a gated mix of the chosen one's query
vector and its own projection.

Why: from scratch, the LLM does not learn to look an object up among its object tokens by shape
or size (README "The main job", sessions 12-22: the first [SEG] picks the right object for ~73 %
of RES val targets; superlatives 0.42 cIoU), while the frozen class map names an object's shape
from its pooled mask (83 %) and the query masks give its size and place. A proposal scorer in
the spirit of MAttNet's subject and location modules reads those per query:

  score_q = beta · log fit_q + a(h) · [phi_q, rank_q] + <W_h h, W_g g_q> / sqrt(D)
  fit_q   = sum_{c,s} (p_col[c] + p_col[any]) (p_shape[s] + p_shape[any]) P_q(c, s)
  phi_q   = [log area, centre x, centre y, log objectness, prior-valid]
  rank_q  = sum_{r != q} w_r sigmoid(k (log area_q - log area_r)) / sum_{r != q} w_r,
            w_r = fit_r · objectness_r: the share of the other objects fitting the noun that q
            is larger than (1 for the largest, 0 for the smallest; superlatives)
  select  = softmax_q(score),  q_seg = q_llm + sigmoid(gate(h)) · (sum_q select_q g_q - q_llm)

h: the [SEG] hidden state; p_col / p_shape: the noun heads (supervised by `selection_loss` on
the target's noun, as rej_presence's are); g_q: the query vector [final query ‖ query_embed] the
[SEG] path decodes; q_llm: text2vision(h). The gate lets a slot whose target is not one object
(GSVA's `all ...`) keep the LLM's own query; `selection_loss` supervises it with whether the
slot has a pointer target (lira_jax/train/seg_pointer.py), and the scores with that target.

Axis letters: N [SEG] slots (B·M), B images, Q panoptic queries, H LLM hidden, D key width,
F per-query features, C colours, S shapes, E query vector (2·head channels), h/w mask grid.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lira_jax.models.rej_presence import noun_fit
from lira_jax.nn.layers import Linear

NUM_FEATURES = 5  # phi; the selector weighs one more, rank
_RANK_SHARPNESS = 10.0  # k: the world's superlatives win by an area ratio >= 1.3 (log 0.26)
_KEY_WIDTH = 32
_EPS = 1e-4


def query_features(class_logits: jax.Array, mask_logits: jax.Array, prior_valid: jax.Array
                   ) -> jax.Array:
  """Per-query evidence from the frozen panoptic pass: class_logits f32[B, Q, C·S+1] (background
  last), mask_logits f32[B, Q, h, w], prior_valid bool[B, Q] -> phi f32[B, Q, F]."""
  probs = jax.nn.sigmoid(mask_logits.astype(jnp.float32))
  h, w = probs.shape[-2:]
  area = probs.sum((-2, -1))
  ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h * 2 - 1
  xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w * 2 - 1
  cy = jnp.einsum('bqhw,h->bq', probs, ys) / jnp.maximum(area, _EPS)
  cx = jnp.einsum('bqhw,w->bq', probs, xs) / jnp.maximum(area, _EPS)
  log_object = jax.nn.log_softmax(class_logits.astype(jnp.float32), axis=-1)[..., -1]
  log_object = jnp.log(jnp.maximum(-jnp.expm1(log_object), _EPS))  # log(1 - p_background)
  phi = jnp.stack([jnp.log(area / (h * w) + 1e-3), cx, cy, log_object,
                   prior_valid.astype(jnp.float32)], axis=-1)
  return jax.lax.stop_gradient(phi)


def size_rank(log_area: jax.Array, weight: jax.Array) -> jax.Array:
  """log_area f32[N, Q], weight f32[N, Q] -> rank_q f32[N, Q] (see the module docstring)."""
  larger = jax.nn.sigmoid(_RANK_SHARPNESS * (log_area[:, :, None] - log_area[:, None, :]))
  others = weight[:, None, :] * (1.0 - jnp.eye(log_area.shape[-1], dtype=weight.dtype))
  return jnp.sum(others * larger, axis=-1) / (jnp.sum(others, axis=-1) + _EPS)


class SegSelect(nnx.Module):

  def __init__(self, hidden: int, query_dim: int, class_factors: tuple[int, int], *,
               rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    mods = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.class_factors = tuple(class_factors)
    colours, shapes = self.class_factors
    self.colour_head = Linear(hidden, colours + 1, axes=('embed', None), **mods)
    self.shape_head = Linear(hidden, shapes + 1, axes=('embed', None), **mods)
    self.feature_weights = Linear(hidden, NUM_FEATURES + 1, axes=('embed', None), **mods)
    self.state_key = Linear(hidden, _KEY_WIDTH, axes=('embed', None), use_bias=False, **mods)
    self.query_key = Linear(query_dim, _KEY_WIDTH, axes=(None, None), use_bias=False, **mods)
    self.gate = Linear(hidden, 1, axes=('embed', None), **mods)
    self.beta = nnx.Param(jnp.ones((), param_dtype), out_sharding=())

  def noun_logits(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
    """f32[..., H] -> (colour f32[..., C+1], shape f32[..., S+1]); the last entry is 'any'."""
    return self.colour_head(hidden), self.shape_head(hidden)

  def scores(self, hidden: jax.Array, image_index: jax.Array, query_feat: jax.Array,
             class_logits: jax.Array, phi: jax.Array) -> tuple[jax.Array, jax.Array]:
    """hidden f32[N, H] of images image_index i32[N]; query_feat f32[B, Q, E], class_logits
    f32[B, Q, C·S+1], phi f32[B, Q, F] -> (scores f32[N, Q], gate logits f32[N])."""
    pc, ps = (jax.nn.softmax(x.astype(jnp.float32), axis=-1) for x in self.noun_logits(hidden))
    fit = noun_fit(pc[:, None], ps[:, None], jax.lax.stop_gradient(class_logits[image_index]),
                   self.class_factors)[:, 0]
    keys = self.query_key(jax.lax.stop_gradient(query_feat[image_index]).astype(jnp.float32))
    lookup = jnp.einsum('nd,nqd->nq', self.state_key(hidden).astype(jnp.float32), keys)
    phi = phi[image_index]
    rank = size_rank(phi[..., 0], fit * jnp.exp(phi[..., 3]))
    features = jnp.concatenate([phi, rank[..., None]], axis=-1)
    weights = self.feature_weights(hidden).astype(jnp.float32)
    score = (self.beta[...] * jnp.log(jnp.maximum(fit, _EPS))
             + jnp.einsum('nf,nqf->nq', weights, features)
             + lookup / math.sqrt(_KEY_WIDTH))
    return score, self.gate(hidden)[..., 0].astype(jnp.float32)

  def __call__(self, hidden: jax.Array, own_queries: jax.Array, image_index: jax.Array,
               query_feat: jax.Array, class_logits: jax.Array, phi: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """own_queries f32[N, E] (text2vision(h)); the rest as in `scores` -> (the queries to decode
    f32[N, E], scores f32[N, Q], gate logits f32[N])."""
    score, gate = self.scores(hidden, image_index, query_feat, class_logits, phi)
    chosen = jnp.einsum('nq,nqe->ne', jax.nn.softmax(score, axis=-1),
                        jax.lax.stop_gradient(query_feat[image_index]).astype(jnp.float32))
    mixed = own_queries + jax.nn.sigmoid(gate)[:, None] * (chosen - own_queries)
    return mixed, score, gate


def selection_loss(scores: jax.Array, gate_logits: jax.Array, target: jax.Array,
                   has_target: jax.Array, valid: jax.Array) -> jax.Array:
  """Cross-entropy of the scores f32[N, Q] on the pointer target i32[N] where has_target bool[N],
  plus the gate's binary cross-entropy (open iff has_target) over the valid bool[N] slots."""
  logp = jax.nn.log_softmax(scores, axis=-1)
  nll = -jnp.take_along_axis(logp, target[:, None], axis=-1)[:, 0]
  choice = jnp.sum(jnp.where(has_target, nll, 0.0)) / jnp.maximum(has_target.sum(), 1)
  gate = (jnp.maximum(gate_logits, 0) - gate_logits * has_target
          + jnp.log1p(jnp.exp(-jnp.abs(gate_logits))))
  return choice + jnp.sum(jnp.where(valid, gate, 0.0)) / jnp.maximum(valid.sum(), 1)
