"""Session 23: the GSVA [REJ]-vs-[SEG] decision margin (logit [REJ] - logit [SEG] at the position
before each target's slot) on the GRES val split, and the N-acc / T-acc a shifted threshold
would give: how far a recalibration can go before the presence evidence itself must improve.
Usage (repo root): python diagnostics/s23_rej_margin.py WORKDIR (a finished stage-2 workdir)"""
import sys

import jax.numpy as jnp
import numpy as np

from launch import train
from lira_jax.eval import teacher_forced as tf
from lira_jax.sequence import first_slot_per_target

margins = []
_orig, _add = tf.predict, tf.Accumulator.add_gres


def predict(model, batch, tokens):
  seg_id, rej_id = tokens['seg'], tokens['rej']
  res = _orig(model, batch, tokens)
  out = model(batch)
  slot, _ = first_slot_per_target(out.plan, res['has_slot'].shape[1])
  pos = jnp.maximum(jnp.take_along_axis(out.plan.seg_index, slot, axis=1) - 1, 0)
  logits = jnp.take_along_axis(out.logits, pos[..., None], axis=1)
  res['margin'] = logits[..., rej_id] - logits[..., seg_id]
  return res


def add_gres(self, out, counted, gt_empty):
  margins.append((np.asarray(out['margin'])[counted], np.asarray(gt_empty)[counted]))
  return _add(self, out, counted, gt_empty)


tf.predict, tf.Accumulator.add_gres = predict, add_gres
train.run('configs/tiny_synthetic.py', sys.argv[1], [2])
margin = np.concatenate([m for m, _ in margins])
absent = np.concatenate([a for _, a in margins])
print(f'{absent.sum()} absent, {(~absent).sum()} present targets')
for shift in (-3, -2, -1.5, -1, -0.5, 0, 0.5, 1):
  rejected = margin > shift
  print(f'threshold {shift:+.1f}: N-acc {rejected[absent].mean():.3f} '
        f'T-acc {(~rejected[~absent]).mean():.3f}')
