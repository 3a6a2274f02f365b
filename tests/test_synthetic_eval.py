"""The synthetic evaluation's right-object diagnosis (lira_jax/eval/synthetic.py)."""
import numpy as np

from lira_jax.data import synthetic
from lira_jax.eval.synthetic import picked_object


def test_picked_object_is_the_best_overlapping_object():
  scene = synthetic.make_sample('val', 0, task='referring', size=128).scene
  objects = scene.objects
  assert len(objects) >= 2
  # A mask covering object 1 plus a sliver of object 0 picks object 1.
  pred = objects[1].mask.copy()
  ys, xs = np.nonzero(objects[0].mask & ~objects[1].mask)
  pred[ys[:3], xs[:3]] = True
  assert picked_object(pred, objects) == 1
  # A mask over two whole objects is closest (IoU) to the larger of them.
  both = objects[0].mask | objects[1].mask
  larger = int(objects[1].mask.sum() > objects[0].mask.sum())
  assert picked_object(both, objects[:2]) == larger
  assert picked_object(np.zeros_like(pred), objects) == -1
