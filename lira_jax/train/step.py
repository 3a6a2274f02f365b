"""The pieces every train step shares: the trainable selection, LoRA wrapping, the optimiser and
its schedule, and a jitted loss-and-gradients for inspection (the train step itself is
lira_jax.train.sharded_step)."""
from __future__ import annotations

import re
from collections.abc import Iterable

import jax
import optax
from flax import nnx

from lira_jax.nn import lora
from lira_jax.train.objective import lira_loss


def trainable_filter(cfg):
  """nnx filter of the Params that train in this stage (cfg.trainable regexes)."""
  return lora.path_filter(cfg.trainable)


def add_lora(model: nnx.Module, cfg, rngs: nnx.Rngs) -> list[str]:
  """Wraps the LLM linears named by cfg.lora (stage 2); returns the wrapped paths."""
  if not cfg.lora.rank:
    return []
  return lora.apply_lora(model, rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                         dropout=cfg.lora.dropout, target_pattern=cfg.lora.target_pattern,
                         rngs=rngs)


def make_tx(cfg, total_steps: int, lr: float | None = None
            ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (released betas / weight decay) after max-norm clipping, with linear warmup from
  warmup_start_factor·lr then cosine to 0, and the per-module multipliers of cfg.optim.lr_scale
  (`scale_by_path`; none by default). Returns (transformation, learning-rate schedule)."""
  o = cfg.optim
  peak = o.lr if lr is None else lr
  warmup = max(1, int(total_steps * o.warmup_ratio))
  schedule = optax.join_schedules(
      [optax.linear_schedule(peak * o.warmup_start_factor, peak, warmup),
       optax.cosine_decay_schedule(peak, max(1, total_steps - warmup))], [warmup])
  parts = [optax.clip_by_global_norm(o.clip_norm),
           optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)]
  if o.get('lr_scale'):
    parts.append(scale_by_path(o.lr_scale))
  return optax.chain(*parts), schedule


def scale_by_path(scales: Iterable[tuple[str, float]]) -> optax.GradientTransformation:
  """Multiplies the update of each Param whose dotted path matches a regex of `scales` ((regex,
  factor) pairs) by the factor of the first that matches: a per-module learning-rate
  multiplier."""
  rules = [(re.compile(pattern), float(factor)) for pattern, factor in scales]

  def factor(path) -> float:
    # 'region_classifier.convs.0.kernel.value': the Param's path, then its value field.
    name = jax.tree_util.keystr(path, simple=True, separator='.')
    return next((f for regex, f in rules if regex.search(name)), 1.0)

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(lambda p, u: u * factor(p), updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def loss_and_grads(cfg):
  """Jitted (loss, parts, grads w.r.t. the trainable selection) for inspection and tests."""
  diff = nnx.DiffState(0, trainable_filter(cfg))

  @nnx.jit
  def fn(model, batch, rng):
    (loss, parts), grads = nnx.value_and_grad(
        lambda m: lira_loss(m, batch, rng, cfg.loss), argnums=diff, has_aux=True)(model)
    return loss, parts, grads

  return fn


