"""The grain pipeline over the synthetic world: batches are the encoded samples of the stage's
stream in order, an iterator restored from its state continues at the exact example, and two
processes' shares interleave into the one-process global batch."""
import jax
import numpy as np
import pytest

import lira_jax  # noqa: F401
from configs.common import stage_config
from lira_jax.data import encode, pipeline, synthetic, synthetic_panoptic
from lira_jax.data.synthetic_tokenizer import world_tokenizer

CFG = stage_config('configs/tiny_synthetic.py:smoke', 2)
CFG.train.batch_size = 4
TOK = world_tokenizer(synthetic.vocabulary_texts(), CFG.tokens)


def _element(index):
  d = CFG.data
  s = synthetic.make_sample('train', index, size=d.image_size, max_targets=d.max_targets,
                            world_seed=d.world_seed, task_weights=dict(d.task_weights))
  element = synthetic.encode_sample(s, TOK, CFG, ilvc=d.ilvc)
  if d.object_labels:  # stage 2 with the region classifier: every object of the scene
    element.update(synthetic_panoptic.panoptic_targets(s.scene, CFG))
  return element


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_follow_the_stage_stream():
  it = iter(pipeline.train_dataset(CFG, TOK, num_batches=3))
  next(it)
  second = next(it)
  start = 2 * pipeline.STAGE_STREAM_OFFSET  # stage 2
  want = encode.collate([_element(start + 4 + j) for j in range(4)])
  _assert_batches_equal(second, want)


def test_stage0_pairs_a_panoptic_scene_with_an_internvl_sample():
  cfg = stage_config('configs/tiny_synthetic.py:smoke,internvl0', 0)
  cfg.train.batch_size = 2
  batch = next(iter(pipeline.train_dataset(cfg, TOK, num_batches=1)))
  d = cfg.data
  for j in range(2):
    scene = synthetic.make_scene(synthetic.sample_rng('train', j, d.world_seed), d.image_size)
    assert batch['pan_valid'][j].sum() == len(scene.objects)
    sample = synthetic.make_sample('train', pipeline.STAGE_STREAM_OFFSET // 2 + j,
                                   size=d.image_size, world_seed=d.world_seed,
                                   task_weights=dict(d.task_weights))
    assert sample.task in ('caption', 'vqa', 'what', 'where')
    element = synthetic.encode_sample(sample, TOK, cfg, ilvc=d.ilvc)
    for key in pipeline.INTERNVL_KEYS:
      np.testing.assert_array_equal(batch[key][j], element[key], err_msg=key)
  default = stage_config('configs/tiny_synthetic.py:smoke', 0)
  default.train.batch_size = 2
  bare = next(iter(pipeline.train_dataset(default, TOK, num_batches=1)))
  assert set(bare) == {'pixels', 'pan_masks', 'pan_classes', 'pan_valid'}
  np.testing.assert_array_equal(bare['pan_masks'], batch['pan_masks'])


def test_iterator_resumes_at_the_exact_example():
  ds = pipeline.train_dataset(CFG, TOK, num_batches=4)
  it = iter(ds)
  next(it)
  state = it.get_state()
  expected = list(it)
  assert len(expected) == 3
  resumed = iter(ds)
  resumed.set_state(state)
  for want in expected:
    _assert_batches_equal(next(resumed), want)
  with pytest.raises(StopIteration):
    next(resumed)


def test_processes_split_the_global_batch(monkeypatch):
  whole = next(iter(pipeline.train_dataset(CFG, TOK, num_batches=1)))
  shares = []
  for index in range(2):
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    monkeypatch.setattr(jax, 'process_index', lambda i=index: i)
    shares.append(next(iter(pipeline.train_dataset(CFG, TOK, num_batches=1))))
  # Process p holds examples p, p + 2, ...: interleaving the shares gives the global batch.
  for key, value in whole.items():
    merged = np.stack([shares[0][key], shares[1][key]], axis=1).reshape(value.shape)
    np.testing.assert_array_equal(merged, value, err_msg=key)
