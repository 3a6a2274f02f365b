"""The real-data pipeline on reader fixtures in the released formats: a RefCOCO + gRefCOCO
mixture with repeats becomes LIRA batches; the corrupt records (a truncated image, a broken
polygon) are skipped and counted instead of ending the epoch."""
import re

import numpy as np

import lira_jax  # noqa: F401
from configs.common import stage_config
from lira_jax.data import mixture_pipeline, synthetic
from lira_jax.data.readers.grefcoco import GRefCOCO
from lira_jax.data.readers.coco_refs import RefCOCO
from lira_jax.data.synthetic_tokenizer import world_tokenizer
from tests.test_readers import data  # noqa: F401  (the fixture)


def _cfg(root):
  cfg = stage_config('configs/tiny_synthetic.py:smoke', 2)
  cfg.data.kind, cfg.data.root, cfg.data.seed = 'mixture', str(root), 0
  cfg.data.system_message = synthetic.SYSTEM_MESSAGE  # within the test tokenizer's words
  cfg.data.sources = dict(
      refcoco=dict(reader='refcoco', repeat=2, args=dict(
          refs_path='refs(unc).p', instances_path='instances.json', image_dir='images',
          split='train')),
      grefcoco=dict(reader='grefcoco', args=dict(
          grefs_path='grefs(unc).json', instances_path='instances.json', image_dir='images',
          split='train')))
  cfg.train.batch_size = 4
  return cfg


def _tokenizer(root, cfg):
  """The world tokenizer grown by every word the fixture's conversations use."""
  texts = list(synthetic.vocabulary_texts())
  readers = [RefCOCO(str(root / 'refs(unc).p'), str(root / 'instances.json'),
                     str(root / 'images'), 'train'),
             GRefCOCO(str(root / 'grefs(unc).json'), str(root / 'instances.json'),
                      str(root / 'images'), 'train')]
  for reader in readers:
    for i in range(len(reader)):
      try:
        texts += [t for turn in reader[i].turns for t in turn]
      except Exception:  # the corrupt records: the pipeline must skip them
        pass
  texts += [' '.join(re.findall(r'\w+', t)) for t in texts]
  return world_tokenizer(texts, cfg.tokens)


def test_mixture_batches_skip_and_count_bad_records(data):  # noqa: F811
  cfg = _cfg(data)
  tok = _tokenizer(data, cfg)
  mixture, sources = mixture_pipeline.build_sources(cfg, tok)
  assert mixture.counts['refcoco'] == 2 * len(sources['refcoco'])
  batches = list(mixture_pipeline.mixture_dataset(cfg, tok, num_batches=4))
  assert len(batches) == 4
  b = batches[0]
  s = cfg.model.omg.image_size
  assert b['pixels'].shape == (4, s, s, 3) and b['gt_masks'].shape[:2] == (4, cfg.seq.max_seg)
  assert b['ids'].shape == (4, cfg.seq.max_len) and b['text_valid'].any(1).all()
  # A referring answer carries its ILVC region; the GT mask of its first target is non-empty.
  assert any(batch['region_valid'].any() for batch in batches)
  assert all(batch['gt_masks'].reshape(4, cfg.seq.max_seg, -1).max(-1)[:, 0].all()
             for batch in batches)
  # One pass over the mixture meets the truncated image (ref 105) and the broken polygon
  # (ref 104): both skipped (the next good record served instead) and counted.
  elements = [mixture[i] for i in range(len(mixture))]
  assert all(e['text_valid'].any() for e in elements)
  assert sources['refcoco'].stats['bad_records'] and sources['refcoco'].stats['skipped'] >= 2
  assert set(sources['refcoco'].stats['errors']) == {'OSError', 'ValueError'}
  np.testing.assert_array_equal(batches[0]['ids'],
                                next(iter(mixture_pipeline.mixture_dataset(
                                    cfg, tok, num_batches=1)))['ids'])
