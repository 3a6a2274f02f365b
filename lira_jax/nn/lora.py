"""LoRA as a wrapper around `Linear` that keeps the base parameter path.

A wrapped module at path `p` still owns `p.kernel` (and `p.bias`); the adapter adds `p.lora_a`
f32[..., in, r] and `p.lora_b` f32[..., r, out] (leading dims match stacked layers). Output:
`x @ W + b + (alpha / r) * dropout(x) @ A @ B`, i.e. peft's LoRA with W stored as [in, out].
"""
from __future__ import annotations

import math
import re
from typing import Iterable

import jax
import jax.numpy as jnp
from flax import nnx

from lira_jax.nn.layers import Linear


def path_str(path) -> str:
  return '.'.join(str(p) for p in path)


class LoRALinear(nnx.Module):
  """Linear + low-rank adapter. Shares the base Linear's variables (same param path)."""

  def __init__(self, base: Linear, *, rank: int, alpha: float, dropout: float, rngs: nnx.Rngs):
    self.in_features, self.out_features, self.dtype = base.in_features, base.out_features, base.dtype
    self.kernel, self.bias = base.kernel, base.bias
    self.scaling = alpha / rank
    self.merged = False
    lead = self.kernel.shape[:-2]
    axes = self.kernel.get_metadata().get('out_sharding') or (None,) * self.kernel.ndim
    bound = 1.0 / math.sqrt(self.in_features)  # peft: kaiming_uniform(a=sqrt(5)) on lora_A
    a = jax.random.uniform(rngs.params(), (*lead, self.in_features, rank), self.kernel.dtype,
                           -bound, bound)
    self.lora_a = nnx.Param(a, out_sharding=(*axes[:-1], 'lora_rank'))
    self.lora_b = nnx.Param(jnp.zeros((*lead, rank, self.out_features), self.kernel.dtype),
                            out_sharding=(*axes[:-2], 'lora_rank', axes[-1]))
    self.dropout = nnx.Dropout(dropout, rngs=None if lead else rngs) if dropout > 0 else None
    if self.dropout is not None and lead:
      # One stream per stacked layer, so the RNG state scans along with the parameters.
      self.dropout.rngs = rngs[self.dropout.rng_collection].split(lead)

  def delta(self) -> jax.Array:
    """(alpha / r) * A @ B, f32[..., in, out]."""
    return self.scaling * jnp.matmul(self.lora_a[...], self.lora_b[...])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    y = jnp.dot(x, self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.merged:
      return y
    h = self.dropout(x) if self.dropout is not None else x
    h = jnp.dot(jnp.dot(h, self.lora_a[...].astype(self.dtype)), self.lora_b[...].astype(self.dtype))
    return y + self.scaling * h


def _linear_sites(model: nnx.Module, pattern: str):
  """Yields (parent, attribute name, Linear, dotted path) for Linear modules matching `pattern`."""
  regex = re.compile(pattern)
  for path, node in list(nnx.iter_graph(model)):
    if isinstance(node, nnx.Module):
      for name, child in list(vars(node).items()):
        if type(child) is Linear and regex.search(path_str((*path, name))):
          yield node, name, child, path_str((*path, name))


def apply_lora(model: nnx.Module, *, rank: int, alpha: float, dropout: float = 0.0,
               target_pattern: str, rngs: nnx.Rngs) -> list[str]:
  """Wraps every `Linear` whose dotted path matches `target_pattern` (re.search). Returns paths."""
  wrapped = []
  for parent, name, linear, path in list(_linear_sites(model, target_pattern)):
    setattr(parent, name, LoRALinear(linear, rank=rank, alpha=alpha, dropout=dropout, rngs=rngs))
    wrapped.append(path)
  if not wrapped:
    raise ValueError(f'LoRA target pattern {target_pattern!r} matched no Linear layer')
  return wrapped


def _lora_modules(model: nnx.Module) -> Iterable[LoRALinear]:
  return [n for _, n in nnx.iter_graph(model) if isinstance(n, LoRALinear)]


def merge_lora(model: nnx.Module) -> None:
  """W <- W + (alpha/r) A B in place; the adapter path is then skipped until `unmerge_lora`."""
  for m in _lora_modules(model):
    if not m.merged:
      m.kernel[...] = (m.kernel[...] + m.delta()).astype(m.kernel.dtype)
      m.merged = True


def unmerge_lora(model: nnx.Module) -> None:
  """Inverse of `merge_lora`: W <- W - (alpha/r) A B and the adapter path is active again."""
  for m in _lora_modules(model):
    if m.merged:
      m.kernel[...] = (m.kernel[...] - m.delta()).astype(m.kernel.dtype)
      m.merged = False


def strip_lora(model: nnx.Module) -> None:
  """Merges every adapter and replaces it by a plain Linear (for export of merged weights)."""
  merge_lora(model)
  for path, node in list(nnx.iter_graph(model)):
    if isinstance(node, nnx.Module):
      for name, child in list(vars(node).items()):
        if isinstance(child, LoRALinear):
          setattr(node, name, Linear.from_variables(child.kernel, child.bias, child.dtype))


def path_filter(patterns: Iterable[str]):
  """An nnx filter selecting Params whose dotted path matches any regex in `patterns`."""
  regexes = [re.compile(p) for p in patterns]

  def select(path, value) -> bool:
    return isinstance(value, nnx.Param) and any(r.search(path_str(path)) for r in regexes)

  return select


def trainable_paths(model: nnx.Module, patterns: Iterable[str]) -> list[str]:
  """Dotted paths of the Params selected as trainable by `patterns` (for logs and checks)."""
  state = nnx.state(model, path_filter(patterns))
  return sorted(path_str(p) for p, _ in nnx.to_flat_state(state))
