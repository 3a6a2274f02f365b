"""grain input pipelines over the synthetic world: sample i of a split is a pure function of i, so
a pipeline is `MapDataset.range` → encode → batch, and its iterator state (a position) is what a
checkpoint stores to resume at the exact example.

With cfg.data.tfds_dir set, examples come instead from the train split of a dataset written by
lira_jax.data.tfds_synthetic (record i = sample i of the world's train split, repeated as epochs).

Each process reads its own slice of the global stream (examples p, p + P, p + 2P, ... for process
p of P), so the global batch is the same for any process count.
"""
from __future__ import annotations

import functools

import grain
import jax

from lira_jax.data import (encode, mixture_pipeline, synthetic, synthetic_panoptic,
                           tfds_synthetic)

# Every stage draws from its own stretch of the endless train stream (different scenes).
STAGE_STREAM_OFFSET = 10_000_000


def _generate(index: int, *, split: str, cfg) -> synthetic.Sample:
  d = cfg.data
  return synthetic.make_sample(split, index, size=d.image_size, max_targets=d.max_targets,
                               world_seed=d.world_seed, task_weights=dict(d.task_weights),
                               referring_rounds=d.referring_rounds, absent_rate=d.absent_rate)


def _encode(sample: synthetic.Sample, *, cfg, tokenizer) -> dict:
  element = synthetic.encode_sample(sample, tokenizer, cfg, ilvc=cfg.data.ilvc)
  if cfg.data.get('object_labels'):  # the region classifier's labels: every object of the scene
    element.update(synthetic_panoptic.panoptic_targets(sample.scene, cfg))
  return element


# What the InternVL half of a stage-0 element keeps of an encoded sample.
INTERNVL_KEYS = ('tiles', 'tile_valid', 'ids', 'labels', 'text_valid')


def _stage0(index: int, *, cfg, tokenizer) -> dict:
  """A panoptic scene for the pixel path, and with cfg.data.task_weights an image-text sample
  (another scene) for the InternVL side."""
  d = cfg.data
  rng = synthetic.sample_rng('train', index, d.world_seed)
  element = synthetic_panoptic.encode_panoptic(synthetic.make_scene(rng, d.image_size), cfg)
  if d.task_weights:
    sample = _generate(STAGE_STREAM_OFFSET // 2 + index, split='train', cfg=cfg)
    encoded = _encode(sample, cfg=cfg, tokenizer=tokenizer)
    element.update({k: encoded[k] for k in INTERNVL_KEYS})
  return element


def _samples(cfg, index: int, stop: int, count: int) -> grain.MapDataset:
  """This process's samples index, index + count, ... < stop of the stage's train stream."""
  if cfg.data.get('tfds_dir'):
    records = grain.MapDataset.source(tfds_synthetic.data_source(cfg.data.tfds_dir, 'train'))
    return records.repeat()[index:stop:count].map(tfds_synthetic.record_to_sample)
  start = int(cfg.stage) * STAGE_STREAM_OFFSET
  return grain.MapDataset.range(start + index, start + stop, count).map(
      functools.partial(_generate, split='train', cfg=cfg))


def train_dataset(cfg, tokenizer, *, num_batches: int) -> grain.IterDataset:
  """num_batches global batches of cfg.train.batch_size for this process (its share of each),
  from the train stream of cfg.stage. Elements: encode.collate batches of numpy arrays
  (stage 0: synthetic_panoptic elements of bare scenes, plus INTERNVL_KEYS of an image-text
  sample when the stage has tasks). cfg.data.kind 'mixture' reads real
  datasets instead (lira_jax.data.mixture_pipeline)."""
  if cfg.data.get('kind', 'synthetic') == 'mixture':
    return mixture_pipeline.mixture_dataset(cfg, tokenizer, num_batches=num_batches)
  count, index = jax.process_count(), jax.process_index()
  global_batch = int(cfg.train.batch_size)
  if global_batch % count:
    raise ValueError(f'batch_size {global_batch} does not split over {count} processes')
  stop = num_batches * global_batch
  if int(cfg.stage) == 0:
    encoded = grain.MapDataset.range(index, stop, count).map(
        functools.partial(_stage0, cfg=cfg, tokenizer=tokenizer))
  else:
    encoded = _samples(cfg, index, stop, count).map(
        functools.partial(_encode, cfg=cfg, tokenizer=tokenizer))
  return (encoded
          .batch(global_batch // count, batch_fn=encode.collate)
          .to_iter_dataset(grain.ReadOptions(num_threads=int(cfg.data.worker_threads),
                                             prefetch_buffer_size=int(cfg.data.prefetch))))
