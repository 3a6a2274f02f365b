"""The command-line contract shared by every converter (`python -m convert.<family>`):

  --src SRC --out DIR            convert (strict; nothing is left at DIR on failure)
  --check                        header-only accounting + shapes against the config (no data read)
  --verify DIR                   run the converted model on DIR/inputs.npz vs DIR/outputs.npz
  --config FILE.py[:arg]         model config when SRC has none (or to override it)
  --export --src DIR --out DIR   converted params back to an original-format safetensors file

A family module provides a `Family` describing its configs, key table and verification.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shutil
import sys
import tempfile
from typing import Callable, Mapping

import ml_collections
import numpy as np
from tqdm import tqdm

from configs import common as config_lib
from convert import keymap
from convert.pth_io import open_checkpoint
from convert.safetensors_io import CheckpointReader, write_safetensors
from lira_jax import param_io


@dataclasses.dataclass
class Family:
  name: str
  # (src path, reader, --config override or None) -> resolved config
  resolve_config: Callable[[pathlib.Path, CheckpointReader, ml_collections.ConfigDict | None],
                           ml_collections.ConfigDict]
  rules: Callable[[ml_collections.ConfigDict], list[keymap.Rule]]
  counts: Callable[[ml_collections.ConfigDict], dict[str, int]]
  target: Callable[[ml_collections.ConfigDict], dict[str, tuple[tuple[int, ...], np.dtype]]]
  # (params {path: array}, config, verify dir) -> {array name: (max_abs, max_rel)}
  verify: Callable[[Mapping[str, np.ndarray], ml_collections.ConfigDict, pathlib.Path],
                   dict[str, tuple[float, float]]]
  skip: dict[str, str] | Callable[[object], dict[str, str]] = dataclasses.field(
      default_factory=dict)
  export_name: str = 'model.safetensors'
  # Extra source flags beyond --src: {flag: help}; `open_sources` merges them into one reader.
  extra_sources: dict[str, str] = dataclasses.field(default_factory=dict)
  # Boolean options ({flag: help}) handed to `open_sources` like the extra sources.
  extra_switches: dict[str, str] = dataclasses.field(default_factory=dict)
  # (params, config) -> (params, config) after the strict table conversion (e.g. LoRA merging).
  finalize: Callable | None = None
  src_flags: tuple[str, ...] = ('--src',)  # names of the main source flag (first is canonical)
  open_sources: Callable[..., object] | None = None
  # Per-array verify tolerances {regex on the array name: atol}, first match wins; arrays no
  # pattern names use the default atol. An explicit --atol applies to every array instead.
  tolerances: dict[str, float] = dataclasses.field(default_factory=dict)

  def reader(self, src, extra=None):
    if self.open_sources is not None:
      return self.open_sources(src, **(extra or {}))
    return open_checkpoint(src)

  def skip_patterns(self, reader) -> dict[str, str]:
    return self.skip(reader) if callable(self.skip) else self.skip


DEFAULT_ATOL = 1e-4


class ConversionError(RuntimeError):
  pass


def with_dtype(target, dtype: str | None):
  if dtype is None:
    return target
  return {k: (shape, np.dtype(dtype) if np.issubdtype(dt, np.floating) else dt)
          for k, (shape, dt) in target.items()}


def check(family: Family, src, config_override=None, dtype=None, log=print, extra=None):
  """Accounting and shapes without reading tensor data.

  Returns (config, instances, target, reader, report)."""
  reader = family.reader(src, extra)
  cfg = family.resolve_config(pathlib.Path(src), reader, config_override)
  target = with_dtype(family.target(cfg), dtype)
  source = {k: (i.shape, i.dtype) for k, i in reader.infos.items()}
  instances, report = keymap.plan(family.rules(cfg), family.counts(cfg), source, target,
                                  family.skip_patterns(reader))
  for line in report.lines():
    log(line)
  return cfg, instances, target, reader, report


def convert(family: Family, src, out, *, config_override=None, dtype='float32', force=False,
            log=print, extra=None) -> tuple[dict[str, np.ndarray], ml_collections.ConfigDict]:
  """Strict conversion into an orbax checkpoint at `out` (written atomically)."""
  out = pathlib.Path(out)
  if out.exists() and any(out.iterdir()) and not force:
    raise ConversionError(f'{out} exists and is not empty (use --force to replace it)')
  cfg, instances, target, reader, report = check(family, src, config_override, dtype, log, extra)
  if not report.ok:
    raise ConversionError(f'{family.name}: conversion refused, see the list above')
  with tqdm(total=len(instances), desc=f'converting {family.name}', unit='tensor',
            file=sys.stderr) as bar:
    params = keymap.execute(instances, reader.get, target, progress=bar)
  if family.finalize is not None:
    params, cfg = family.finalize(params, cfg)
  out.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
  try:
    param_io.save(staging, params, cfg)
    if out.exists():
      shutil.rmtree(out)
    staging.rename(out)
  finally:
    if staging.exists():
      shutil.rmtree(staging)
  log(f'wrote {len(params)} params to {out}')
  return params, cfg


def print_verify(errors: dict[str, tuple[float, float]], atol: float, log=print,
                 tolerances: Mapping[str, float] | None = None) -> bool:
  """tolerances: optional {regex: atol} per array name (first match wins, else `atol`); when
  given, each line also shows the atol it was held to."""
  if not errors:
    log('verify: no known arrays compared')
    return False
  width = max(len(k) for k in errors)
  ok = True
  per_array = bool(tolerances)
  header = f'{"array":<{width}}  {"max_abs":>10}  {"max_rel":>10}'
  log(header + (f'  {"atol":>9}' if per_array else ''))
  for name, (abs_err, rel_err) in errors.items():
    limit = next((t for pattern, t in (tolerances or {}).items() if re.search(pattern, name)), atol)
    bad = not abs_err <= limit
    ok &= not bad
    log(f'{name:<{width}}  {abs_err:10.3e}  {rel_err:10.3e}'
        f'{f"  {limit:9.1e}" if per_array else ""}{"  > atol" if bad else ""}')
  limits = 'per-array atol' if per_array else f'atol {atol:g}'
  log(f'verify {"PASSED" if ok else "FAILED"} ({limits})')
  return ok


def compare(got, want) -> tuple[float, float]:
  """(max |got - want|, that divided by max |want|); exact equality for booleans."""
  got, want = np.asarray(got), np.asarray(want)
  if got.shape != want.shape:
    raise ConversionError(f'shape {got.shape} != reference {want.shape}')
  if want.dtype == bool:
    diff = float(np.sum(got != want))
    return diff, diff / max(want.size, 1)
  d = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.
  scale = float(np.max(np.abs(want))) if want.size else 0.
  return d, d / max(scale, 1e-30)


def compare_golden(directory, predict: Callable[[dict], dict], log=print
                   ) -> dict[str, tuple[float, float]]:
  """Runs `predict(inputs)` on DIR/inputs.npz and compares every array of DIR/outputs.npz that it
  produced; the arrays it cannot compute are listed, never silently dropped."""
  directory = pathlib.Path(directory)
  for name in ('inputs.npz', 'outputs.npz'):
    if not (directory / name).is_file():
      raise ConversionError(f'{directory / name} not found')
  inputs, outputs = np.load(directory / 'inputs.npz'), np.load(directory / 'outputs.npz')
  got = predict(dict(inputs))
  errors = {name: compare(got[name], outputs[name]) for name in outputs.files if name in got}
  unknown = [name for name in outputs.files if name not in got]
  log(f'verify: not compared (not computed by this converter): {", ".join(unknown) or "none"}')
  return errors


def export(family: Family, directory, out, log=print) -> pathlib.Path:
  """Writes converted params back as an original-format safetensors checkpoint."""
  cfg = param_io.load_config(directory)
  params = {k: np.asarray(v) for k, v in param_io.load_params(directory, family.target(cfg)).items()}
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / family.export_name
  write_safetensors(path, keymap.export(family.rules(cfg), family.counts(cfg), params))
  log(f'exported {family.name} params to {path}')
  return path


def main(family: Family, argv=None) -> int:
  p = argparse.ArgumentParser(prog=f'python -m convert.{family.name}', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument(*family.src_flags, dest='src', required=True,
                 help='original checkpoint (dir or file)')
  p.add_argument('--out', help='output directory')
  p.add_argument('--verify', metavar='DIR', help='dir with inputs.npz / outputs.npz')
  p.add_argument('--atol', type=float, default=None,
                 help=f'max abs error for every verified array (default: the family\'s per-array '
                      f'table, else {DEFAULT_ATOL:g})')
  p.add_argument('--check', action='store_true', help='header-only accounting, no data read')
  p.add_argument('--config', help='configs/FILE.py[:arg] overriding the checkpoint config')
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                 help='dtype of the converted params')
  p.add_argument('--export', action='store_true',
                 help='--src is a converted dir; write the original format to --out')
  p.add_argument('--force', action='store_true', help='replace a non-empty --out')
  for flag, help_text in family.extra_sources.items():
    p.add_argument(f'--{flag}', help=help_text)
  for flag, help_text in family.extra_switches.items():
    p.add_argument(f'--{flag}', action='store_true', help=help_text)
  args = p.parse_args(argv)
  extra = {flag.replace('-', '_'): getattr(args, flag.replace('-', '_'))
           for flag in (*family.extra_sources, *family.extra_switches)}
  override = config_lib.load_config(args.config) if args.config else None
  try:
    if args.export:
      if not args.out:
        p.error('--export needs --out')
      export(family, args.src, args.out)
      return 0
    if args.check:
      *_, report = check(family, args.src, override, args.dtype, extra=extra)
      return 0 if report.ok else 1
    if args.out:
      params, cfg = convert(family, args.src, args.out, config_override=override,
                            dtype=args.dtype, force=args.force, extra=extra)
    elif args.verify:
      cfg, instances, target, reader, report = check(family, args.src, override, args.dtype,
                                                     extra=extra)
      if not report.ok:
        raise ConversionError('accounting failed; nothing to verify')
      params = keymap.execute(instances, reader.get, target)
      if family.finalize is not None:
        params, cfg = family.finalize(params, cfg)
    else:
      p.error('give --out, --check, --verify or --export')
    if args.verify:
      errors = family.verify(params, cfg, pathlib.Path(args.verify))
      atol = DEFAULT_ATOL if args.atol is None else args.atol
      tolerances = family.tolerances if args.atol is None else None
      return 0 if print_verify(errors, atol, tolerances=tolerances) else 1
    return 0
  except (ConversionError, FileNotFoundError, ValueError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
