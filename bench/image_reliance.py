"""How much the InternVL side reads the image: train the InternVL model alone (InternViT -> mlp1 ->
LLM, `LIRA.internvl_logits`, from random weights) on synthetic image-text tasks, and score the
val answers with each image's own semantic tokens and with the next image's (rolled over the
batch).

  python bench/image_reliance.py [--config configs/tiny_synthetic.py]
      [--tasks caption,vqa,what,where] [--steps 2000] [--batch 16] [--lr 2e-3] [--eval-every 500]

Per task and evaluation point: answer cross-entropy per supervised token, true / rolled. A model
that ignores its image scores the same both ways. Tasks are synthetic.make_sample's (a `what`
sample whose expression names both attributes asks `where`, and is counted under `what`). The
last line is `image_reliance: task=X ...` with X = rolled CE / true CE - 1 at the last step
(0 = blind).
Session 9 (README, "The main job") used this to find that captions are read but `where` is not.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lira_jax  # noqa: F401  (first: disables eager sharding)

import argparse
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs.common import stage_config
from lira_jax.data import encode, synthetic
from lira_jax.data.tokenizers import load_tokenizer
from lira_jax.models.lira import LIRA
from lira_jax.train import losses

KEYS = ('tiles', 'tile_valid', 'ids', 'labels', 'text_valid')
VAL_BATCHES, VAL_BATCH = 6, 32


def make_batch(cfg, tokenizer, tasks, split, start, size):
  """Samples start..start+size of split, task k % len(tasks) for sample k: (batch, task ids)."""
  d, elements, which = cfg.data, [], []
  for k in range(start, start + size):
    sample = synthetic.make_sample(split, k, task=tasks[k % len(tasks)], size=d.image_size,
                                   world_seed=d.world_seed)
    elements.append(synthetic.encode_sample(sample, tokenizer, cfg, ilvc=False))
    which.append(k % len(tasks))
  batch = encode.collate(elements)
  return {key: jnp.asarray(batch[key]) for key in KEYS}, np.asarray(which)


def answer_ce(model, batch, roll):
  """Summed answer CE and supervised-token count per sample: (f32[B], i32[B])."""
  if roll:
    batch = dict(batch, tiles=jnp.roll(batch['tiles'], 1, axis=0),
                 tile_valid=jnp.roll(batch['tile_valid'], 1, axis=0))
  logits, plan = model.internvl_logits(batch)
  nll, valid = losses.token_nll(logits, plan.labels)
  return nll.sum(1), valid.sum(1)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default='configs/tiny_synthetic.py')
  p.add_argument('--tasks', default='caption,vqa,what,where')
  p.add_argument('--steps', type=int, default=2000)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--lr', type=float, default=2e-3)
  p.add_argument('--eval-every', type=int, default=500)
  args = p.parse_args()
  tasks = args.tasks.split(',')
  cfg = stage_config(args.config, 2)
  cfg.seq.max_len = 96  # 16 image tokens + the longest caption / question
  tokenizer = load_tokenizer(cfg)
  model = LIRA(cfg, rngs=nnx.Rngs(0), with_backbone=False)
  internvl = nnx.Any(nnx.PathContains('vision'), nnx.PathContains('llm'))
  schedule = optax.warmup_cosine_decay_schedule(args.lr * 0.01, args.lr,
                                                max(1, args.steps // 20), args.steps)
  optimizer = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0),
                                               optax.adamw(schedule, weight_decay=0.0)),
                            wrt=internvl)

  @nnx.jit
  def train_step(model, optimizer, batch):
    def loss_fn(model):
      logits, plan = model.internvl_logits(batch)
      return losses.text_loss(logits, plan.labels)[0]
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, internvl))(model)
    optimizer.update(model, grads)
    return loss

  score = nnx.jit(answer_ce, static_argnums=2)
  val = [make_batch(cfg, tokenizer, tasks, 'val', b * VAL_BATCH, VAL_BATCH)
         for b in range(VAL_BATCHES)]

  def evaluate():
    out = {}
    for roll in (False, True):
      total, count = np.zeros(len(tasks)), np.zeros(len(tasks))
      for batch, which in val:
        ce, n = (np.asarray(x) for x in score(model, batch, roll))
        for t in range(len(tasks)):
          total[t] += ce[which == t].sum()
          count[t] += n[which == t].sum()
      out[roll] = total / np.maximum(count, 1)
    return out

  began = time.monotonic()
  for step in range(1, args.steps + 1):
    batch, _ = make_batch(cfg, tokenizer, tasks, 'train', step * args.batch, args.batch)
    loss = train_step(model, optimizer, batch)
    if step % args.eval_every == 0 or step == args.steps:
      ce = evaluate()
      print(f'step {step} loss {float(loss):.3f} ({time.monotonic() - began:.0f} s)  answer CE '
            'true / rolled: ' + '  '.join(f'{t} {ce[False][k]:.3f} / {ce[True][k]:.3f}'
                                          for k, t in enumerate(tasks)), flush=True)
  print('image_reliance: ' + ' '.join(f'{t}={ce[True][k] / ce[False][k] - 1:.3f}'
                                      for k, t in enumerate(tasks)))


if __name__ == '__main__':
  main()
