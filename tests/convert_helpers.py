"""Shared helpers for the converter tests: run a converter as a user would (fresh process) or
in-process, write sparse checkpoints from the real-size manifests, compare round trips."""
import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys

from convert import cli
from convert.safetensors_io import write_sparse_checkpoint

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANIFEST_DTYPES = {'bfloat16': 'BF16', 'float32': 'F32', 'float16': 'F16'}


def run_cli(module: str, *args, timeout=600):
  """`python -m convert.<module> ARGS` in a fresh process -> (exit code, stdout + stderr)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, '-m', f'convert.{module}', *map(str, args)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout + proc.stderr


def run_main(family, *args):
  """The same CLI in this process (no interpreter and JAX start-up per call)."""
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
    code = cli.main(family, [str(a) for a in args])
  return code, buf.getvalue()


def manifest_shapes(manifest: pathlib.Path, keep=lambda k: True) -> dict:
  tensors = json.loads(pathlib.Path(manifest).read_text())['tensors']
  return {k: (v['shape'], MANIFEST_DTYPES[v['dtype']]) for k, v in tensors.items() if keep(k)}


def sparse_from_manifest(manifest: pathlib.Path, dst: pathlib.Path, keep=lambda k: True,
                         shards: int = 1) -> pathlib.Path:
  """A checkpoint with exactly the manifest's headers and no data (sparse files). With shards > 1
  `dst` is a directory of shards plus index.json; else `dst` is the .safetensors file."""
  shapes = manifest_shapes(manifest, keep)
  if shards == 1:
    write_sparse_checkpoint(dst, shapes)
    return dst
  dst.mkdir(parents=True)
  names, weight_map = list(shapes), {}
  for s in range(shards):
    fname = f'model-{s + 1:05d}-of-{shards:05d}.safetensors'
    part = names[s::shards]
    write_sparse_checkpoint(dst / fname, {k: shapes[k] for k in part})
    weight_map.update({k: fname for k in part})
  (dst / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))
  return dst


def assert_bit_identical(orig, back):
  """Two readers hold the same tensors with the same dtypes, shapes and bytes."""
  assert sorted(orig.keys()) == sorted(back.keys())
  for k in orig.keys():
    a, b = orig.get(k), back.get(k)
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), k
