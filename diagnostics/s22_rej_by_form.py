"""Session 22: GSVA [REJ] decisions on the GRES val split by expression form (kind, which of
colour / shape the noun names), present vs absent. Usage (from the repo root):
  [REJP=1] python diagnostics/s22_rej_by_form.py WORKDIR   (a finished stage-2 workdir)"""
import collections
import sys

import numpy as np

from launch import train
from lira_jax.data import synthetic as sy
from lira_jax.eval import synthetic as es, teacher_forced as tf

chunks, decisions = [], []  # GRES batches in order; evaluation scores them in the same order
_batches, _add = es._batches, tf.Accumulator.add_gres


def batches(cfg, tokenizer, samples, batch_size):
  for batch, chunk in _batches(cfg, tokenizer, samples, batch_size):
    if chunk[0].task == 'gres':
      chunks.append(chunk)
    yield batch, chunk


def add_gres(self, out, counted, gt_empty):
  decisions.append((np.asarray(out['reject']), counted, gt_empty))
  return _add(self, out, counted, gt_empty)


es._batches, tf.Accumulator.add_gres = batches, add_gres
train.run('configs/tiny_synthetic.py', sys.argv[1], [2])
table = collections.defaultdict(lambda: [0, 0])  # (form, absent) -> [rejected, count]
for chunk, (reject, counted, gt_empty) in zip(chunks, decisions, strict=True):
  for j, s in enumerate(chunk):
    for k, text in enumerate(s.expressions):
      if counted[j, k]:
        assert gt_empty[j, k] == (not s.targets[k])
        cell = table[(sy.expression_form(text), bool(gt_empty[j, k]))]
        cell[0] += int(reject[j, k])
        cell[1] += 1
for (form, absent), (rej, n) in sorted(table.items()):
  print(f'{form[0]:12s} {form[1]:3s} {"absent " if absent else "present"} '
        f'rejected {rej / n:.2f} of {n}')
