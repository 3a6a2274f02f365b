"""Session 25: what limits N-acc. Per GRES target, the [REJ]-vs-[SEG] evidence at the decision
position (the LLM's own margin = final margin - presence offset, the offset, and noun-fit
features of the class map and of the frozen map alone); the AUC of the LLM's own margin; a
logistic regression on those features fitted on GRES targets of the train split (absent rate
0.5, as val) and scored on val: N-acc at the model's T-acc. Usage (repo root):
  python diagnostics/s25_rej_evidence.py STAGE2_CHECKPOINT_DIR [TRAIN_SAMPLES]"""
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lira_jax import cli, sharding
from lira_jax.eval import synthetic as es
from lira_jax.models.rej_presence import noun_fit
from lira_jax.sequence import first_slot_per_target
from lira_jax.train.loop import put_batch

cfg, tokenizer, graphdef, states = cli.load_model('configs/tiny_synthetic.py', sys.argv[1])
mesh = sharding.make_mesh(dict(cfg.mesh))
factors = tuple(cfg.model.omg.head.class_factors)
seg_id, rej_id = int(cfg.tokens.seg), int(cfg.tokens.rej)


def log_odds(p):
  return jnp.log(jnp.clip(p, 1e-4, 1)) - jnp.log(jnp.clip(1 - p, 1e-4, 1))


@jax.jit
def run(states, batch):
  model = nnx.merge(graphdef, *states)
  out = model(batch)
  omg = model.omg(batch['pixels'], max_valid=model.max_queries)
  cm = model.class_map(omg, model.region_classes(omg, batch['pixels']))
  frozen = omg.decoder.class_logits[-1]
  slot, has = first_slot_per_target(out.plan, batch['gt_masks'].shape[1])
  pos = jnp.maximum(jnp.take_along_axis(out.plan.seg_index, slot, axis=1) - 1, 0)
  st = jnp.take_along_axis(out.hidden, pos[..., None], axis=1)
  lg = jnp.take_along_axis(out.logits, pos[..., None], axis=1)
  margin = lg[..., rej_id] - lg[..., seg_id]
  offset = model.rej_presence(st, cm)
  pc, ps = (jax.nn.softmax(x, -1) for x in model.rej_presence.noun_logits(st))
  feats = [margin - offset, offset]
  for c in (cm, frozen):
    fits = noun_fit(pc, ps, c, factors)
    pbg = jax.nn.softmax(c, -1)[..., -1][:, None]
    conf = (c[..., :-1].max(-1) > c[..., -1])[:, None]
    g = jnp.where(conf, fits, 0)
    top2 = jax.lax.top_k(g, 2)[0]
    feats += [log_odds(top2[..., 0]), log_odds(top2[..., 1]),
              log_odds(jnp.max(fits * (1 - pbg), -1)),
              log_odds(1 - jnp.prod(1 - fits * (1 - pbg), -1)), log_odds(jnp.max(fits, -1)),
              jnp.sum(g > 0.5, -1).astype(jnp.float32)]
  return jnp.stack(feats, -1), has


def collect(split_offset, count, split):
  cfg.eval.split = split
  X, y = [], []
  for batch, chunk in es._batches(cfg, tokenizer, es._samples(cfg, 'gres', split_offset, count), 8):
    f, has = jax.device_get(run(states, put_batch(batch, mesh)))
    has = has & (np.arange(8) < len(chunk))[:, None]
    gt_empty = batch['gt_masks'].reshape(*has.shape, -1).max(-1) == 0
    X.append(f[has]); y.append(gt_empty[has])
  return np.concatenate(X), np.concatenate(y)

Xv, yv = collect(1000, 1000, 'val')
# train split with the val's absent rate: make_sample default absent_rate 0.5
Xt, yt = collect(0, int(sys.argv[2]) if len(sys.argv) > 2 else 2000, 'train')
print(f'{len(yt)} train targets ({yt.mean():.3f} absent), {len(yv)} val ({yv.mean():.3f} absent)')

names = ['own', 'offset'] + [f'{m}_{f}' for m in ('map', 'frz')
                             for f in ('top1', 'top2', 'soft', 'nor', 'all', 'n')]


def fit(x, y, l2=1e-2, iters=3000, lr=0.1):
  """L2-regularised logistic regression on standardised features, by gradient descent."""
  mu, sd = x.mean(0), x.std(0) + 1e-6
  z = (x - mu) / sd
  w, b = np.zeros(z.shape[1]), 0.0
  for _ in range(iters):
    p = 1 / (1 + np.exp(-(z @ w + b)))
    w -= lr * (z.T @ (p - y) / len(y) + l2 * w)
    b -= lr * np.mean(p - y)
  return lambda x: ((x - mu) / sd) @ w + b


def auc(score, y):
  pos, neg = score[y], score[~y]
  return np.mean(pos[:, None] > neg[None]) + 0.5 * np.mean(pos[:, None] == neg[None])


def report(name, score, y):
  """N-acc / T-acc at threshold 0, and N-acc where T-acc is 0.979 (the model's) or 0.97."""
  out = [f'{name:28s} at 0: N {(score[y] > 0).mean():.3f} T {(score[~y] <= 0).mean():.3f}']
  for tacc in (.979, .97):
    out.append(f'N@T{tacc} {(score[y] > np.quantile(score[~y], tacc)).mean():.3f}')
  print(' '.join(out))


report('the model (val)', Xv[:, 0] + Xv[:, 1], yv)
print('AUC of the LLM own margin %.4f' % auc(Xv[:, 0], yv))
for cols in ([0, 1], [0, 2], [0, 4], [0, 5], [0, 2, 3, 4, 5, 6, 7], list(range(14)),
             list(range(1, 14)), [0, 5, 11], [0, 1, 5]):
  report('+'.join(names[c] for c in cols)[:28], fit(Xt[:, cols], yt)(Xv[:, cols]), yv)
