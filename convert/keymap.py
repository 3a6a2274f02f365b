"""Conversion as data: key tables of `Rule`s with named bidirectional `Transform`s, and strict
accounting (every source key used or deliberately skipped, every target param set, every shape
checked).

A rule maps source keys (PyTorch names, `{i}` = layer index) to target param paths (dotted nnx
paths). When `repeat` names a layer count, the rule is expanded for i = 0..n-1 and each target is a
stacked param whose leading axis is the layer: instance i writes slice i.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform:
  """forward: source arrays -> target arrays; backward: the exact inverse (for export).
  Both must use only array methods (reshape/transpose/slicing/.T) in forward so that shapes can be
  checked with jax.eval_shape without reading data."""
  name: str
  forward: Callable[..., tuple]
  backward: Callable[..., tuple]


IDENTITY = Transform('identity', lambda x: (x,), lambda y: (y,))
# torch Linear weight f32[out, in] -> kernel f32[in, out]
LINEAR = Transform('linear', lambda w: (w.T,), lambda k: (k.T,))
# torch Conv2d weight f32[out, in, kh, kw] -> HWIO kernel f32[kh, kw, in, out]
CONV = Transform('conv', lambda w: (w.transpose(2, 3, 1, 0),), lambda k: (k.transpose(3, 2, 0, 1),))


def reshape(src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> Transform:
  return Transform(f'reshape{tuple(src_shape)}->{tuple(dst_shape)}',
                   lambda x: (x.reshape(dst_shape),), lambda y: (y.reshape(src_shape),))


def split_rows(sizes: tuple[int, ...], transpose: bool = True) -> Transform:
  """One torch tensor whose rows (dim 0) are [part_0; part_1; ...] -> one target per part
  (transposed to [in, out] kernels for 2-D weights when `transpose`)."""
  bounds = np.cumsum((0,) + tuple(sizes))

  def forward(w):
    parts = tuple(w[bounds[j]:bounds[j + 1]] for j in range(len(sizes)))
    return tuple(p.T for p in parts) if transpose and w.ndim == 2 else parts

  def backward(*parts):
    parts = [p.T for p in parts] if transpose and parts[0].ndim == 2 else parts
    return (np.concatenate(parts, axis=0),)

  return Transform(f'split_rows{tuple(sizes)}', forward, backward)


@dataclasses.dataclass(frozen=True)
class Rule:
  src: tuple[str, ...]
  dst: tuple[str, ...]
  transform: Transform = IDENTITY
  repeat: str | None = None

  def expand(self, counts: Mapping[str, int]) -> list['Instance']:
    if self.repeat is None:
      return [Instance(self, self.src, tuple((d, None) for d in self.dst))]
    n = counts[self.repeat]
    return [Instance(self, tuple(s.format(i=i) for s in self.src),
                     tuple((d, i) for d in self.dst)) for i in range(n)]


@dataclasses.dataclass(frozen=True)
class Instance:
  rule: Rule
  src: tuple[str, ...]
  dst: tuple[tuple[str, int | None], ...]  # (param path, layer index or None)


def r(src, dst, transform=IDENTITY, repeat=None) -> Rule:
  """Shorthand: strings or tuples for src/dst."""
  as_tuple = lambda x: (x,) if isinstance(x, str) else tuple(x)
  return Rule(as_tuple(src), as_tuple(dst), transform, repeat)


def prefixed(prefix: str, rules: Iterable[Rule]) -> list[Rule]:
  """The same rules with a source-key prefix (e.g. 'language_model.')."""
  return [dataclasses.replace(x, src=tuple(prefix + s for s in x.src)) for x in rules]


@dataclasses.dataclass
class Report:
  """Outcome of matching a source key set against a target param set."""
  missing_source: list[str] = dataclasses.field(default_factory=list)
  unused_source: list[str] = dataclasses.field(default_factory=list)
  unset_target: list[str] = dataclasses.field(default_factory=list)
  shape_errors: list[str] = dataclasses.field(default_factory=list)
  skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  num_source: int = 0
  num_target: int = 0

  @property
  def ok(self) -> bool:
    return not (self.missing_source or self.unused_source or self.unset_target or self.shape_errors)

  def lines(self) -> list[str]:
    out = [f'source tensors: {self.num_source}, target params: {self.num_target}']
    for reason, keys in self.skipped.items():
      out.append(f'skipped deliberately ({reason}): {len(keys)} tensors')
    for title, items in (('MISSING in source', self.missing_source),
                         ('UNUSED source tensor', self.unused_source),
                         ('UNSET target param', self.unset_target),
                         ('SHAPE mismatch', self.shape_errors)):
      out += [f'{title}: {x}' for x in items]
    out.append('accounting OK: every source tensor used or skipped by rule, every target set'
               if self.ok else
               f'accounting FAILED: {len(self.missing_source)} missing, {len(self.unused_source)} '
               f'unused, {len(self.unset_target)} unset, {len(self.shape_errors)} mis-shaped')
    return out


def _slot_shape(target_shape, index):
  return tuple(target_shape[1:]) if index is not None else tuple(target_shape)


def plan(rules: Iterable[Rule], counts: Mapping[str, int],
         source: Mapping[str, tuple[tuple[int, ...], np.dtype]],
         target: Mapping[str, tuple[tuple[int, ...], np.dtype]],
         skip: Mapping[str, str] | None = None) -> tuple[list[Instance], Report]:
  """Matches rules against source shapes and target shapes without touching data.

  skip: {regex: reason} for source keys that are deliberately not converted (reported by name
  pattern, never silently). Returns the instances that can be executed and the report.
  """
  report = Report(num_source=len(source), num_target=len(target))
  used: set[str] = set()
  assigned: dict[str, set] = {}
  instances = []
  for rule in rules:
    for inst in rule.expand(counts):
      absent = [s for s in inst.src if s not in source]
      if absent:
        report.missing_source += absent
        continue
      used.update(inst.src)
      src_abs = [jax.ShapeDtypeStruct(source[s][0], source[s][1]) for s in inst.src]
      try:
        dst_abs = jax.eval_shape(inst.rule.transform.forward, *src_abs)
      except (TypeError, ValueError) as e:
        shapes = ', '.join(f'{s} {tuple(source[s][0])}' for s in inst.src)
        report.shape_errors.append(f'{shapes}: {inst.rule.transform.name} cannot produce '
                                   f'{", ".join(p for p, _ in inst.dst)} ({str(e).splitlines()[0]})')
        for path, index in inst.dst:
          assigned.setdefault(path, set()).add(index)
        continue
      good = True
      for (path, index), got in zip(inst.dst, dst_abs):
        if path not in target:
          report.unset_target.append(f'{path} (rule for {inst.src[0]} names a param the model '
                                     'does not have)')
          good = False
          continue
        want = _slot_shape(target[path][0], index)
        if index is not None and index >= target[path][0][0]:
          report.shape_errors.append(f'{path}[{index}]: layer index beyond stacked size '
                                     f'{target[path][0][0]}')
          good = False
        elif tuple(got.shape) != want:
          report.shape_errors.append(f'{", ".join(inst.src)} -> {path}'
                                     f'{"" if index is None else f"[{index}]"}: '
                                     f'source gives {tuple(got.shape)}, model expects {want}')
          good = False
        assigned.setdefault(path, set()).add(index)
      if good:
        instances.append(inst)
  skip = skip or {}
  for key in source:
    if key in used:
      continue
    reason = next((why for pattern, why in skip.items() if re.search(pattern, key)), None)
    if reason is None:
      report.unused_source.append(key)
    else:
      report.skipped.setdefault(reason, []).append(key)
  for path, (shape, _) in target.items():
    got = assigned.get(path, set())
    if not got:
      report.unset_target.append(path)
    elif None not in got:
      missing = sorted(set(range(shape[0])) - got)
      if missing:
        report.unset_target.append(f'{path} layers {missing}')
  return instances, report


def execute(instances: Iterable[Instance], read: Callable[[str], np.ndarray],
            target: Mapping[str, tuple[tuple[int, ...], np.dtype]], progress=None
            ) -> dict[str, np.ndarray]:
  """Runs planned instances tensor by tensor into preallocated target arrays (peak memory: one
  copy of the target plus the tensor in flight; sources are memory-mapped)."""
  out: dict[str, np.ndarray] = {}
  for inst in instances:
    results = inst.rule.transform.forward(*(read(s) for s in inst.src))
    for (path, index), value in zip(inst.dst, results):
      shape, dtype = target[path]
      if path not in out:
        out[path] = np.empty(shape, dtype)
      if index is None:
        out[path][...] = value
      else:
        out[path][index] = value
    if progress is not None:
      progress.update(1)
  return out


def export(rules: Iterable[Rule], counts: Mapping[str, int], params: Mapping[str, np.ndarray]):
  """Inverse direction: yields (source key, array) for every rule instance, in table order."""
  for rule in rules:
    for inst in rule.expand(counts):
      dst = [params[p] if i is None else params[p][i] for p, i in inst.dst]
      for key, value in zip(inst.src, rule.transform.backward(*dst)):
        yield key, np.ascontiguousarray(value)
