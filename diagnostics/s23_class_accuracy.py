"""Session 23: how well the frozen panoptic class map and the region classifier
(lira_jax/models/region_classify.py) name the colour and shape of the val objects, by object
size. A query is scored on the object its mask (> 0) overlaps with IoU >= 0.5.
Usage (repo root): python diagnostics/s23_class_accuracy.py STAGE2_CHECKPOINT_DIR [SCENES]"""
import collections
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lira_jax import cli
from lira_jax.data import encode, synthetic, synthetic_panoptic

cfg, _, graphdef, states = cli.load_model('configs/tiny_synthetic.py', sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 400
shapes = cfg.model.omg.head.class_factors[1]


@jax.jit
def classify(states, pixels):
  model = nnx.merge(graphdef, *states)
  omg = model.omg(pixels, max_valid=model.max_queries)
  frozen = omg.decoder.class_logits[-1]
  region = model.region_classes(omg, pixels)
  return frozen, region, omg.decoder.mask_logits[-1]


table = collections.defaultdict(collections.Counter)
for start in range(0, count, 8):
  scenes = [synthetic.make_sample('val', i, size=cfg.data.image_size).scene
            for i in range(start, start + 8)]
  batch = encode.collate([synthetic_panoptic.encode_panoptic(s, cfg) for s in scenes])
  frozen, region, masks = jax.device_get(classify(states, jnp.asarray(batch['pixels'])))
  pred = masks > 0
  gt = batch['pan_masks'] > 0.5
  for b in range(8):
    for o in np.flatnonzero(batch['pan_valid'][b]):
      inter = (pred[b] & gt[b, o]).sum((-2, -1))
      iou = inter / np.maximum((pred[b] | gt[b, o]).sum((-2, -1)), 1)
      q = int(np.argmax(iou))
      area = gt[b, o].sum()
      size = 'small (<20 cells)' if area < 20 else 'medium (20-50)' if area < 50 else 'large'
      c = table[size]
      c['objects'] += 1
      if iou[q] < 0.5:
        c['no query'] += 1
        continue
      colour, shape = divmod(int(batch['pan_classes'][b, o]), shapes)
      fc, fs = divmod(int(np.argmax(frozen[b, q, :-1])), shapes)
      c['frozen colour'] += fc == colour
      c['frozen shape'] += fs == shape
      if region is not None:
        c['region colour'] += int(np.argmax(region[0][b, q])) == colour
        c['region shape'] += int(np.argmax(region[1][b, q])) == shape
        things = np.exp(frozen[b, q, :-1] - frozen[b, q, :-1].max())
        marginal = np.log(things.reshape(-1, shapes).sum(0) / things.sum())
        region_logp = region[1][b, q] - np.log(np.exp(region[1][b, q]).sum())
        c['both shape'] += int(np.argmax(marginal + region_logp)) == shape
for size, c in sorted(table.items()):
  n = c['objects'] - c['no query']
  print(f'{size:18s} objects {c["objects"]:4d} no query {c["no query"] / c["objects"]:.2f} '
        + ' '.join(f'{k} {v / max(n, 1):.3f}' for k, v in c.items()
                   if k not in ('objects', 'no query')))
