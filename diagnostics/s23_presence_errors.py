"""Session 23: why the [REJ] presence head (lira_jax/models/rej_presence.py) accepts absent
targets on the GRES val split. For every absent target: the query with the highest noun fit
among the confident ones, the scene object its mask covers (IoU >= 0.3, else 'no object'), and
whether that object's true class fits the noun (a relation-false no-target) or not (the class
map misnames it). Usage (repo root):
  python diagnostics/s23_presence_errors.py STAGE2_DIR [NUM_GRES]"""
import collections
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lira_jax import cli
from lira_jax.data import synthetic as sy
from lira_jax.eval import synthetic as es
from lira_jax.models.rej_presence import noun_fit

cfg, tokenizer, graphdef, states = cli.load_model('configs/tiny_synthetic.py', sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
factors = tuple(cfg.model.omg.head.class_factors)


@jax.jit
def run(states, batch):
  model = nnx.merge(graphdef, *states)
  out = model(batch)
  class_map = model.class_map(*(lambda o: (o, model.region_classes(o, batch['pixels'])))(
      model.omg(batch['pixels'], max_valid=model.max_queries)))
  pos = jnp.maximum(out.plan.seg_index - 1, 0)
  states_ = jnp.take_along_axis(out.hidden, pos[..., None], axis=1)
  pc, ps = (jax.nn.softmax(x, -1) for x in model.rej_presence.noun_logits(states_))
  fit = noun_fit(pc, ps, class_map, factors)  # [B, M, Q]
  confident = class_map[..., :-1].max(-1) > class_map[..., -1]
  offset = model.rej_presence(states_, class_map)
  return dict(fit=jnp.where(confident[:, None], fit, -1.0), offset=offset,
              seg_target=out.plan.seg_target, seg_valid=out.plan.seg_valid,
              qmask=out.query_mask_logits > 0, cls=jnp.argmax(class_map[..., :-1], -1))


samples = es._samples(cfg, 'gres', cfg.eval.num_res, count)
table = collections.Counter()
for batch, chunk in es._batches(cfg, tokenizer, samples, cfg.eval.batch_size):
  out = jax.device_get(run(states, {k: jnp.asarray(v) for k, v in batch.items()}))
  for j, s in enumerate(chunk):
    seen = set()
    for m in np.flatnonzero(out['seg_valid'][j]):
      k = int(out['seg_target'][j, m])
      if k in seen or s.targets[k]:
        continue
      seen.add(k)
      accepted = out['offset'][j, m] < 0
      q = int(np.argmax(out['fit'][j, m]))
      qm = np.kron(out['qmask'][j, q], np.ones((4, 4), bool))
      ious = [np.sum(qm & o.mask) / max(np.sum(qm | o.mask), 1) for o in s.scene.objects]
      obj = int(np.argmax(ious)) if max(ious) >= 0.3 else -1
      noun = sy.noun_ids([s.expressions[k]], 1)[0]
      if obj < 0:
        where = 'no object'
      else:
        o = s.scene.objects[obj]
        c, sh = list(sy.COLOURS).index(o.colour), sy.SHAPES.index(o.shape)
        fits = noun[0] in (c, len(sy.COLOURS)) and noun[1] in (sh, len(sy.SHAPES))
        small = o.mask.sum() < 300
        where = ('object fitting the noun' if fits else
                 f'object of another class ({"small" if small else "large"}, map says '
                 f'{"right" if out["cls"][j, q] == c * factors[1] + sh else "wrong"})')
      table[('accepted' if accepted else 'rejected', where)] += 1
for (verdict, where), n in sorted(table.items()):
  print(f'{verdict:8s} {where:55s} {n}')
