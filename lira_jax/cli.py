"""Command line: `python -m lira_jax <command>` (also the `lira-jax` console script).

  segment IMAGE "PROMPT" --ckpt DIR   masks of what the prompt refers to: one PNG per target, an
                                      overlay PNG (one colour per target, with its phrase) and a
                                      COCO RLE JSON, in --out
  gcg IMAGE --ckpt DIR                a grounded caption (ILVC on), the same three outputs
  chat IMAGE --ckpt DIR               multi-turn chat about one image (stdin, empty line ends);
                                      masks of each answer written like `segment`'s
  eval --ckpt DIR                     the generation-based benchmarks on the synthetic val split
                                      (lira_jax.eval.benchmarks): metrics.json + samples.jsonl

--ckpt is a `launch.train` workdir (its latest stage is used) or one stage's directory; --config
is the config it was trained with (default: the embedded tiny synthetic one).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

import lira_jax  # noqa: F401
from configs.common import stage_config
from lira_jax import sharding
from lira_jax.data import synthetic
from lira_jax.data.tokenizers import load_tokenizer
from lira_jax.eval import benchmarks
from lira_jax.eval.gcg_metrics import encode_rle
from lira_jax.infer.answer import history_answer
from lira_jax.infer.runner import Result, Runner, load_image, prompt_element
from lira_jax.train import sharded_step
from lira_jax.train.checkpoint import Checkpointer

DEFAULT_CONFIG = 'configs/tiny_synthetic.py'
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60))


def stage_checkpoint_dir(path: str) -> tuple[str, int]:
  """(directory holding checkpoints/, stage) for a train workdir or a stage directory."""
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    name = os.path.basename(os.path.normpath(path))
    return path, int(name[5:]) if name.startswith('stage') and name[5:].isdigit() else 2
  stages = sorted(int(d[5:]) for d in os.listdir(path) if d.startswith('stage') and d[5:].isdigit()
                  and os.path.isdir(os.path.join(path, d, 'checkpoints'))) if os.path.isdir(
                      path) else []
  if not stages:
    raise ValueError(f'{path!r} holds no checkpoints (expected a launch.train workdir or a '
                     'stageN directory)')
  return os.path.join(path, f'stage{stages[-1]}'), stages[-1]


def load_model(config: str, ckpt: str):
  """(cfg, tokenizer, graphdef, states) restored from a training checkpoint."""
  directory, stage = stage_checkpoint_dir(ckpt)
  cfg = stage_config(config, stage)
  mesh = sharding.make_mesh(dict(cfg.mesh))
  graphdef, abstract, _ = sharded_step.abstract_train_state(cfg, mesh, seed=cfg.train.seed)
  checkpointer = Checkpointer(directory)
  state, _ = checkpointer.restore(abstract)
  checkpointer.close()
  tokenizer = load_tokenizer(cfg)
  return cfg, tokenizer, graphdef, (state.trainable, state.frozen)


def overlay_targets(image: np.ndarray, result: Result) -> Image.Image:
  """The image with each target's mask tinted in its own colour and its phrase in a legend."""
  out = image.astype(np.float32)
  shown = [(t, m) for t, m in zip(result.targets, result.masks) if not t.rejected]
  for k, (_, mask) in enumerate(shown):
    out[mask] = 0.45 * out[mask] + 0.55 * np.asarray(PALETTE[k % len(PALETTE)], np.float32)
  h, w = image.shape[:2]
  legend = 14 * max(len(result.targets), 1)
  canvas = Image.new('RGB', (max(w, 256), h + legend), (255, 255, 255))
  canvas.paste(Image.fromarray(out.astype(np.uint8)), (0, legend))
  draw = ImageDraw.Draw(canvas)
  k = 0
  for row, t in enumerate(result.targets):
    colour = (0, 0, 0) if t.rejected else PALETTE[k % len(PALETTE)]
    draw.text((2, 1 + 14 * row), f'{t.phrase}{" [REJ]" if t.rejected else ""}', fill=colour)
    k += not t.rejected
  return canvas


def write_outputs(out_dir: str, image: np.ndarray, result: Result, prefix: str = '') -> list[str]:
  """mask_K.png per target, overlay.png, masks.json (COCO RLE + phrase); returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for k, (t, mask) in enumerate(zip(result.targets, result.masks)):
    path = os.path.join(out_dir, f'{prefix}mask_{k}.png')
    Image.fromarray((mask * 255).astype(np.uint8)).save(path)
    paths.append(path)
  path = os.path.join(out_dir, f'{prefix}overlay.png')
  overlay_targets(image, result).save(path)
  paths.append(path)
  path = os.path.join(out_dir, f'{prefix}masks.json')
  with open(path, 'w') as f:
    json.dump(dict(text=result.text, targets=[
        dict(phrase=t.phrase, rejected=t.rejected, segmentation=encode_rle(m))
        for t, m in zip(result.targets, result.masks)]), f, indent=1)
  paths.append(path)
  return paths


def _answer(runner: Runner, image: Image.Image, turns, ilvc: bool) -> Result:
  element = prompt_element(image, turns, runner.tokenizer, runner.cfg, ilvc=ilvc,
                           system_message=synthetic.SYSTEM_MESSAGE)
  return runner.run([element])[0]


def _with_image(prompt: str) -> str:
  return prompt if synthetic.IMAGE_PLACEHOLDER in prompt else (
      synthetic.IMAGE_PLACEHOLDER + '\n' + prompt)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='lira_jax', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest='command', required=True)
  for name in ('segment', 'gcg', 'chat', 'eval'):
    c = sub.add_parser(name)
    if name != 'eval':
      c.add_argument('image')
    if name == 'segment':
      c.add_argument('prompt')
    c.add_argument('--ckpt', required=True)
    c.add_argument('--config', default=DEFAULT_CONFIG)
    c.add_argument('--out', default=f'out/{name}')
    c.add_argument('--max-new-tokens', type=int, default=64)
    if name == 'eval':
      c.add_argument('--batch-size', type=int, default=8)
      c.add_argument('--count', type=int, default=50, help='prompts per benchmark')
      c.add_argument('--caption-metrics', default='METEOR,CIDEr')
  args = p.parse_args(argv)

  try:
    image = load_image(args.image) if args.command != 'eval' else None
    cfg, tokenizer, graphdef, states = load_model(args.config, args.ckpt)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  runner = Runner(cfg, tokenizer, graphdef, states,
                  batch_size=args.batch_size if args.command == 'eval' else 1,
                  max_new_tokens=args.max_new_tokens,
                  log=print if args.command == 'eval' else None)
  del states  # the runner holds its own layout of the weights
  try:
    if args.command == 'eval':
      metrics = benchmarks.evaluate(runner, {k: args.count for k in benchmarks.RUNNERS},
                                    args.out, caption_metrics=args.caption_metrics.split(','))
      print(json.dumps(metrics, indent=1))
      print(os.path.abspath(os.path.join(args.out, 'metrics.json')))
      return 0
    rgb = np.asarray(image)
    if args.command in ('segment', 'gcg'):
      prompt = args.prompt if args.command == 'segment' else synthetic.GCG_QUESTION
      result = _answer(runner, image, [(_with_image(prompt), None)], ilvc=True)
      print(result.text)
      for path in write_outputs(args.out, rgb, result):
        print(path)
      return 0
    turns, k = [], 0
    for line in sys.stdin:
      if not line.strip():
        break
      turns.append((_with_image(line.strip()) if not turns else line.strip(), None))
      result = _answer(runner, image, turns, ilvc=True)
      turns[-1] = (turns[-1][0], history_answer(tokenizer, result.ids, cfg.tokens))
      print(result.text, flush=True)
      if result.targets:
        write_outputs(args.out, rgb, result, prefix=f'turn{k}_')
      k += 1
    return 0
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
