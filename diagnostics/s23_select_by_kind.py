"""Session 23: where the [SEG] selector (lira_jax/models/seg_select.py) goes wrong on RES val.
For each RES target: the object of the selector's top query (by mask IoU against the scene's
objects), its probability, the gate; failures split into 'other noun' (the chosen object does
not fit the expression's target noun) and 'same noun' (it does: size / place decided wrong), by
kind. Usage (repo root): python diagnostics/s23_select_by_kind.py WORKDIR [NUM_RES]"""
import collections
import sys

import jax
import jax.numpy as jnp
import numpy as np

from launch import train
from lira_jax import rej
from lira_jax.data import synthetic as sy
from lira_jax.eval import synthetic as es, teacher_forced as tf
from lira_jax.sequence import first_slot_per_target

chunks, outputs = [], []  # RES batches in order; evaluation scores them in the same order
_orig_predict, _batches = tf.predict, es._batches


def predict(model, batch, tokens):
  seg_id, rej_id = tokens['seg'], tokens['rej']
  res = _orig_predict(model, batch, tokens)
  out = model(dict(batch, ids=rej.reeval_ids(batch['ids'], seg_id, rej_id)))
  b, k = res['has_slot'].shape
  slot, _ = first_slot_per_target(out.plan, k)
  scores = out.seg_select_scores.reshape(b, -1, out.seg_select_scores.shape[-1])
  gate = out.seg_gate.reshape(b, -1)
  res['scores'] = jnp.take_along_axis(scores, slot[:, :, None], axis=1)[:, 0]
  res['gate'] = jax.nn.sigmoid(jnp.take_along_axis(gate, slot, axis=1)[:, 0])
  res['qmask'] = out.query_mask_logits > 0
  return res


def batches(cfg, tokenizer, samples, batch_size):
  for batch, chunk in _batches(cfg, tokenizer, samples, batch_size):
    if chunk[0].task == 'referring':
      chunks.append(chunk)
    yield batch, chunk


_add = tf.Accumulator.add_res


def add_res(self, out, counted):
  outputs.append(out)
  return _add(self, out, counted)


tf.predict, es._batches, tf.Accumulator.add_res = predict, batches, add_res
overrides = [f'eval.num_res={sys.argv[2]}', 'eval.num_gres=8'] if len(sys.argv) > 2 else []
train.run('configs/tiny_synthetic.py', sys.argv[1], [2], overrides=overrides)

table = collections.defaultdict(collections.Counter)
for chunk, out in zip(chunks, outputs, strict=True):
  for j, s in enumerate(chunk):
    (target,), text = s.targets[0], s.expressions[0]
    kind = sy.expression_kind(text)
    q = int(np.argmax(out['scores'][j]))
    prob = float(jax.nn.softmax(out['scores'][j])[q])
    qm = np.kron(out['qmask'][j, q], np.ones((4, 4), bool))
    chosen = es.picked_object(qm, s.scene.objects)
    final = es.picked_object(out['masks'][j, 0], s.scene.objects)
    words = text.split()
    noun = words[2:4] if kind == 'superlative' else words[1:3]
    noun = [w for w in noun if w in sy.COLOURS or w.rstrip('s') in sy.SHAPES]
    o = s.scene.objects[chosen] if chosen >= 0 else None
    fits = o is not None and all(w in (o.colour, o.shape) for w in noun)
    c = table[kind]
    c['n'] += 1
    c['final right'] += final == target
    c['top query right'] += chosen == target
    c['wrong, other noun'] += chosen != target and not fits
    c['wrong, same noun'] += chosen != target and fits
    c['gate>0.5'] += out['gate'][j] > 0.5
    c['top prob>0.9'] += prob > 0.9
for kind, c in sorted(table.items()):
  n = c.pop('n')
  print(f'{kind:12s} n={n:4d} ' + ' '.join(f'{k} {v / n:.2f}' for k, v in c.items()))
