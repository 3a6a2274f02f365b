"""Conversion + decoding demo on the golden tiny InternVL2 (the main job is launch/train.py):

1. convert the tiny original-format InternVL2 checkpoint in ../shared/golden/internvl2_tiny with
   the strict converter and verify every golden array against the original PyTorch outputs;
2. load the converted orbax checkpoint and run the golden multimodal prompt (2 tiles) through the
   compiled KV-cache greedy decoder, checking the cached decode against full forwards.

  python -m launch.main [--src DIR] [--workdir DIR] [--new-tokens N]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lira_jax  # noqa: F401
from convert import cli, internvl2
from lira_jax import param_io
from lira_jax.infer.generate import generate_tokens
from lira_jax.models.internvl import InternVL

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SRC = ROOT.parent / 'shared' / 'golden' / 'internvl2_tiny'


def full_forward_greedy(model: InternVL, embeds, n: int) -> list[int]:
  """Reference for the cached decoder: re-run the whole sequence for every new token."""
  out = []
  for _ in range(n):
    logits = model.llm(embeds, jnp.ones(embeds.shape[:2], bool))
    nxt = int(jnp.argmax(logits[0, -1]))
    out.append(nxt)
    embeds = jnp.concatenate([embeds, model.llm.embed_tokens(jnp.array([[nxt]]))], axis=1)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--src', default=str(DEFAULT_SRC))
  p.add_argument('--workdir', default=str(ROOT / 'out' / 'demo'))
  p.add_argument('--new-tokens', type=int, default=8)
  args = p.parse_args(argv)
  src, workdir = pathlib.Path(args.src), pathlib.Path(args.workdir)
  start = time.time()

  print(f'== 1. convert {src} (strict) and verify against the original outputs')
  params, cfg = cli.convert(internvl2.FAMILY, src, workdir / 'internvl2', force=True)
  errors = internvl2.verify(params, cfg, src)
  if not cli.print_verify(errors, atol=1e-4):
    return 1

  print('== 2. load the converted checkpoint and decode with the KV cache')
  target = internvl2.target(cfg)
  model = nnx.eval_shape(lambda: InternVL(cfg.model, rngs=nnx.Rngs(0)))
  param_io.assign(model, param_io.load_params(workdir / 'internvl2', target))
  inputs = np.load(src / 'inputs.npz')
  tiles = jnp.asarray(inputs['pixel_values']).transpose(0, 2, 3, 1)[None]
  ids = jnp.asarray(inputs['input_ids'], jnp.int32)
  embeds = jax.jit(lambda m, i, t: m.input_embeddings(i, t))(model, ids, tiles)
  tokens = generate_tokens(model.llm, embeds, jnp.ones(ids.shape, bool), jax.random.key(0),
                            max_new_tokens=args.new_tokens)
  cached = [int(t) for t in tokens[0]]
  reference = full_forward_greedy(model, embeds, args.new_tokens)
  print(f'prompt: {ids.shape[1]} tokens ({tiles.shape[1]} tiles -> '
        f'{int((ids == cfg.model.image_context_id).sum())} image tokens)')
  print(f'greedy (KV cache, compiled loop): {cached}')
  print(f'greedy (full forward each step):  {reference}')
  agree = cached == reference
  summary = {'verify_max_abs': {k: v[0] for k, v in errors.items()},
             'decode_matches_full_forward': agree, 'seconds': round(time.time() - start, 1)}
  (workdir / 'summary.json').write_text(json.dumps(summary, indent=2))
  print(f'{"OK" if agree else "MISMATCH"}: cached decoding '
        f'{"equals" if agree else "differs from"} full forwards; {summary["seconds"]} s')
  print(workdir / 'summary.json')
  return 0 if agree else 1


if __name__ == '__main__':
  sys.exit(main())
