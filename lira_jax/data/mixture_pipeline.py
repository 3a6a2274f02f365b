"""The grain input pipeline over real datasets: readers (lira_jax.data.readers) -> per-record
encoding with bad records skipped and counted -> a seeded mixture with per-source repeats /
weights -> this process's stride -> batches.

cfg.data (kind 'mixture'):
  root     the data directory; reader arguments ending in _path / _dir are relative to it
  sources  {name: {reader, args, repeat, weight}}: reader one of READERS, args its keyword
           arguments (paths, split, mode, ...), repeat the released configs' repeat factor
           (default 1), weight an optional sampling share (all or none of the sources)
  seed     mixture order and the readers' draws
  ilvc     answers with local images (True, the released stage 2) or stripped
  system_message  optional; None or absent: the chat template's (the released setting)
Every record of the mixture is seen once per epoch over all processes: process p of P reads
records p, p + P, ... of the (endless, epoch after epoch) mixture, like the synthetic pipeline.
"""
from __future__ import annotations

import functools
import os

import grain
import jax
import numpy as np
from PIL import Image

from lira_jax.data import encode
from lira_jax.data.readers import coco_refs, gcg, grefcoco, llava
from lira_jax.data.readers.example import Example, load_image
from lira_jax.data.readers.mixture import Mixture, SkippingSource
from lira_jax.eval.gcg_metrics import decode_rle

READERS = dict(refcoco=coco_refs.RefCOCO, grefcoco=grefcoco.GRefCOCO, gcg=gcg.GCGSource,
               llava=llava.LLaVA)


def example_element(example: Example, *, tokenizer, cfg) -> dict[str, np.ndarray]:
  """One batch element (lira_jax.data.encode layout) of a reader's Example. Raises on a bad
  image or mask; the SkippingSource around it turns that into a counted skip."""
  if not example.image_path:
    raise ValueError(f'{example.source}/{example.id}: text-only examples are not supported')
  image = Image.fromarray(load_image(example.image_path))
  masks = np.stack([decode_rle(r) for r in example.masks]) if example.masks else np.zeros(
      (0, image.height, image.width), bool)
  return encode.encode_example(image, example.turns, masks, tokenizer, cfg,
                               ilvc=bool(cfg.data.ilvc),
                               system_message=cfg.data.get('system_message'))


def build_sources(cfg, tokenizer) -> tuple[Mixture, dict[str, SkippingSource]]:
  """The mixture of encoded, skipping sources, and those sources by name (their skip stats)."""
  d = cfg.data
  element = functools.partial(example_element, tokenizer=tokenizer, cfg=cfg)
  sources, repeats, weights = {}, {}, {}
  for name, spec in d.sources.items():
    if spec.reader not in READERS:
      raise KeyError(f'source {name}: unknown reader {spec.reader!r}; known: {sorted(READERS)}')
    args = {k: os.path.join(d.get('root', ''), v) if k.endswith(('_path', '_dir')) else v
            for k, v in dict(spec.args).items()}
    reader = READERS[spec.reader](**args)
    sources[name] = SkippingSource(reader, transform=element)
    repeats[name] = int(spec.get('repeat', 1))
    if spec.get('weight') is not None:
      weights[name] = float(spec.weight)
  if weights and len(weights) != len(sources):
    raise ValueError('give a weight to every source or to none')
  mixture = Mixture(sources, repeats=repeats, weights=weights or None, seed=int(d.seed))
  return mixture, sources


def mixture_dataset(cfg, tokenizer, *, num_batches: int) -> grain.IterDataset:
  """num_batches global batches of cfg.train.batch_size for this process (its share of each)."""
  count, index = jax.process_count(), jax.process_index()
  global_batch = int(cfg.train.batch_size)
  if global_batch % count:
    raise ValueError(f'batch_size {global_batch} does not split over {count} processes')
  mixture, _ = build_sources(cfg, tokenizer)
  stop = num_batches * global_batch
  records = grain.MapDataset.source(mixture).repeat()[index:stop:count]
  return (records
          .batch(global_batch // count, batch_fn=encode.collate)
          .to_iter_dataset(grain.ReadOptions(num_threads=int(cfg.data.worker_threads),
                                             prefetch_buffer_size=int(cfg.data.prefetch))))
