"""The synthetic world written as a tfds array_record dataset and read back without TensorFlow:
every record equals the on-the-fly make_sample (image bytes, texts, masks, targets, objects),
record_to_sample rebuilds the Sample exactly (encode_sample gives the same element), the splits
differ, and grain reads the source."""
import os

import grain
import numpy as np
import pytest

import lira_jax  # noqa: F401
from configs import common
from lira_jax.data import encode
from lira_jax.data import synthetic as sy
from lira_jax.data import tfds_synthetic as ts
from lira_jax.data.synthetic_tokenizer import world_tokenizer

SIZE = 64
COUNTS = {'train': 5, 'val': 3}


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  return ts.write(tmp_path_factory.mktemp('tfds'), num_examples=COUNTS, image_size=SIZE)


def test_files_are_array_record(builder):
  files = os.listdir(builder.data_dir)
  assert 'lira_synthetic-train.array_record-00000-of-00001' in files
  assert 'lira_synthetic-val.array_record-00000-of-00001' in files
  assert str(builder.data_dir).endswith('lira_synthetic/64px_k2_seed0_train5_val3/1.1.0')


@pytest.mark.parametrize('split', list(COUNTS))
def test_records_equal_make_sample(builder, split):
  source = ts.data_source(builder.data_dir, split)
  assert len(source) == COUNTS[split]
  for i in range(COUNTS[split]):
    record, ref = source[i], sy.make_sample(split, i, size=SIZE)
    assert int(record['index']) == i
    assert record['image'].dtype == np.uint8 and record['image'].shape == (SIZE, SIZE, 3)
    assert record['image'].tobytes() == ref.scene.image.tobytes()
    assert record['task'].decode() == ref.task
    assert record['question'].decode() == ref.question
    assert record['answer'].decode() == ref.answer
    assert [e.decode() for e in record['expressions']] == list(ref.expressions)
    k = len(ref.targets)
    assert record['masks'].shape == (k, SIZE, SIZE) and record['masks'].dtype == np.uint8
    np.testing.assert_array_equal(record['masks'].astype(bool), ref.masks)
    for row, target in zip(record['targets'], ref.targets):
      assert tuple(int(j) for j in row if j >= 0) == target
    for k_, target in enumerate(ref.targets):  # a no-target expression stores an all-zero mask
      assert record['masks'][k_].any() == bool(target)

    got = ts.record_to_sample(record)
    assert (got.task, got.turns) == (ref.task, ref.turns)
    assert (got.expressions, got.targets) == (ref.expressions, ref.targets)
    np.testing.assert_array_equal(got.scene.image, ref.scene.image)
    np.testing.assert_array_equal(got.masks, ref.masks)
    assert len(got.scene.objects) == len(ref.scene.objects)
    for a, b in zip(got.scene.objects, ref.scene.objects):
      assert (a.shape, a.colour, a.size, a.center) == (b.shape, b.colour, b.size, b.center)
      np.testing.assert_array_equal(a.mask, b.mask)


def test_tasks_cover_with_and_without_targets(builder):
  records = [r for s in COUNTS for r in ts.data_source(builder.data_dir, s)]
  ks = {len(r['masks']) for r in records}
  assert 0 in ks and max(ks) > 0  # 'attr' / 'vqa' records have K = 0


def test_splits_differ(builder):
  train = [r['image'].tobytes() for r in ts.data_source(builder.data_dir, 'train')]
  val = [r['image'].tobytes() for r in ts.data_source(builder.data_dir, 'val')]
  assert not set(train) & set(val)


def test_encode_sample_and_grain(builder):
  cfg = common.load_config('configs/lira_2b.py:tiny')
  tok = world_tokenizer(sy.vocabulary_texts(), cfg.tokens)
  ds = grain.MapDataset.source(ts.data_source(builder.data_dir, 'train')).map(ts.record_to_sample)
  i = next(j for j in range(len(ds)) if ds[j].masks.any())
  got = sy.encode_sample(ds[i], tok, cfg, ilvc=True)
  ref = sy.encode_sample(sy.make_sample('train', i, size=SIZE), tok, cfg, ilvc=True)
  assert got.keys() == ref.keys()
  for key in ref:
    np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


def test_train_pipeline_reads_the_written_dataset(builder):
  from configs.common import stage_config
  from lira_jax.data import pipeline
  cfg = stage_config('configs/tiny_synthetic.py:smoke', 2)
  cfg.data.update(image_size=SIZE, tfds_dir=str(builder.data_dir))
  cfg.model.omg.image_size = SIZE
  cfg.train.batch_size = 3
  tok = world_tokenizer(sy.vocabulary_texts(), cfg.tokens)
  batches = list(pipeline.train_dataset(cfg, tok, num_batches=2))
  # 6 examples from a 5-record split: the second epoch starts at record 0 again.
  want = [sy.encode_sample(sy.make_sample('train', i % 5, size=SIZE), tok, cfg, ilvc=True)
          for i in range(6)]
  for b, batch in enumerate(batches):
    for key, value in encode.collate(want[3 * b:3 * b + 3]).items():
      np.testing.assert_array_equal(batch[key], value, err_msg=key)


def test_multi_turn_samples_round_trip(tmp_path):
  """Follow-up turns (referring_rounds > 1) are stored and read back in order; the settings
  name the dataset directory."""
  built = ts.write(tmp_path, num_examples=dict(train=3), image_size=SIZE, referring_rounds=3,
                   absent_rate=0.75, task_weights=dict(referring=1.0))
  assert str(built.data_dir).endswith('_r3_a0.75/1.1.0')
  source = ts.data_source(built.data_dir, 'train')
  for i in range(3):
    ref = sy.make_sample('train', i, size=SIZE, task_weights=dict(referring=1.0),
                         referring_rounds=3, absent_rate=0.75)
    got = ts.record_to_sample(source[i])
    assert got.turns == ref.turns and len(got.turns) > 1
    assert got.targets == ref.targets
