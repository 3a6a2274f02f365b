"""The sharded step of the embedded default (tiny LIRA trained from scratch) overfits one batch of
synthetic samples (a referring one, a GRES one with a present and an absent target): the loss
falls near zero and the teacher-forced evaluator scores the batch's masks at cIoU near 1 with
every [SEG]/[REJ] decision right; the GCG sample's phrases come out right both after the GT local
images and after those of the model's own masks (lira_jax/eval/region_naming.py)."""
import jax
import numpy as np
import pytest

import lira_jax  # noqa: F401
from configs.common import stage_config
from lira_jax import sharding
from lira_jax.data import encode, pipeline, synthetic
from lira_jax.data.synthetic_tokenizer import world_tokenizer
from lira_jax.eval import region_naming, teacher_forced
from lira_jax.train import sharded_step
from lira_jax.train.loop import put_batch

STEPS = 120


@pytest.mark.slow
def test_one_batch_overfits_to_near_zero_loss_and_full_ciou():
  cfg = stage_config('configs/tiny_synthetic.py:smoke', 2)
  cfg.optim.update(lr=3e-3, warmup_ratio=0.05)
  cfg.trainable = ('.*',)  # the pixel path too: stage 2 freezes it, but here it is untrained
  tok = world_tokenizer(synthetic.vocabulary_texts(), cfg.tokens)
  d = cfg.data
  samples = [synthetic.make_sample('train', i, task=task, size=d.image_size)
             for i, task in ((0, 'referring'), (2, 'gres'), (1, 'gcg'))]
  # As the pipeline encodes them: with the scene's objects, the region classifier's labels.
  batch = encode.collate([pipeline._encode(s, cfg=cfg, tokenizer=tok) for s in samples])
  mesh = sharding.make_mesh({'data': 1}, devices=jax.devices()[:1])
  graphdef, state, shardings = sharded_step.build_train_state(cfg, mesh)
  step = sharded_step.make_sharded_train_step(cfg, mesh, graphdef, shardings, total_steps=STEPS)
  placed = put_batch(batch, mesh)
  losses = []
  for _ in range(STEPS):
    state, m = step(state, placed)
    losses.append(float(m['loss']))
    assert int(m['seg_dropped']) == 0  # every [SEG]/[REJ] fits the packed sequence
  assert losses[-1] < 0.05 * losses[0], losses[::20]

  out = jax.device_get(teacher_forced.make_predict_fn(graphdef, cfg.tokens)(
      (state.trainable, state.frozen), placed))
  has = out['has_slot']
  gt = batch['gt_masks'] > 0.5
  np.testing.assert_array_equal(out['inter'], (out['masks'] & gt).sum((-2, -1)))
  np.testing.assert_array_equal(out['union'], (out['masks'] | gt).sum((-2, -1)))
  gt_empty = batch['gt_masks'].reshape(*has.shape, -1).max(-1) == 0
  np.testing.assert_array_equal(out['reject'][has], gt_empty[has])
  present = has & ~gt_empty
  ciou = out['inter'][present].sum() / out['union'][present].sum()
  assert ciou > 0.9, ciou

  phrases = sum(s.answer.count('<p>') for s in samples)
  assert phrases >= 2 and int(out['phrase_valid'].sum()) == phrases
  assert out['phrase_right'][out['phrase_valid']].all()
  images = dict(image=np.stack([s.scene.image for s in samples]),
                image_hw=np.array([x.scene.image.shape[:2] for x in samples], np.int32))
  own = jax.device_get(region_naming.make_own_region_fn(graphdef, cfg.tokens)(
      (state.trainable, state.frozen), put_batch(dict(batch, **images), mesh)))
  np.testing.assert_array_equal(own['valid'], out['phrase_valid'])
  assert own['right'][own['valid']].all()
