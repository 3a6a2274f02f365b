"""Session 25: does occlusion explain the class map's shape errors? For each val object, its
visible fraction (visible pixels / the same shape drawn alone), whether a panoptic query covers
it (IoU >= 0.5), and whether the class map the [REJ] presence head reads (frozen x region
classifier) names that query's shape right. Usage (repo root):
  python diagnostics/s25_class_map_by_visibility.py STAGE2_CHECKPOINT_DIR [SCENES]"""
import collections
import math
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
side = cfg.data.image_size


@jax.jit
def classify(states, pixels):
  model = nnx.merge(graphdef, *states)
  omg = model.omg(pixels, max_valid=model.max_queries)
  return (model.class_map(omg, model.region_classes(omg, pixels)),
          omg.decoder.mask_logits[-1])


def visible_fraction(o) -> float:
  upright = math.pi / 4 if o.shape == 'square' else 0.0  # the drawn angle is upright +- 0.2
  alone = synthetic._draw_mask(o.shape, o.center[0], o.center[1], o.size, upright, side)
  return o.mask.sum() / max(alone.sum(), 1)


table = collections.defaultdict(collections.Counter)
for start in range(0, count, 8):
  scenes = [synthetic.make_sample('val', i, size=side).scene for i in range(start, start + 8)]
  batch = encode.collate([synthetic_panoptic.encode_panoptic(s, cfg) for s in scenes])
  class_map, masks = jax.device_get(classify(states, jnp.asarray(batch['pixels'])))
  pred, gt = masks > 0, batch['pan_masks'] > 0.5
  for b, scene in enumerate(scenes):
    for o in np.flatnonzero(batch['pan_valid'][b]):
      seen = visible_fraction(scene.objects[o])
      row = table['>= 0.95' if seen >= 0.95 else '0.80-0.95' if seen >= 0.8 else '< 0.80']
      row['objects'] += 1
      iou = (pred[b] & gt[b, o]).sum((-2, -1)) / np.maximum((pred[b] | gt[b, o]).sum((-2, -1)), 1)
      q = int(np.argmax(iou))
      if iou[q] < 0.5:
        row['no query'] += 1
        continue
      shape = int(batch['pan_classes'][b, o]) % shapes
      row['shape right'] += int(np.argmax(class_map[b, q, :-1])) % shapes == shape
for visible, row in sorted(table.items()):
  covered = row['objects'] - row['no query']
  print(f'visible {visible:9s} objects {row["objects"]:5d} no query '
        f'{row["no query"] / row["objects"]:.2f} class map shape {row["shape right"] / covered:.3f}')
