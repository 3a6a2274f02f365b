"""The synthetic referring world (lira_jax.data.synthetic) as a tensorflow-datasets dataset.

Why: synthetic.make_sample draws each scene on the fly, which costs CPU in the input pipeline
and ties readers to this code. Writing the world once as array_record files gives a fixed,
random-access dataset (tfds `as_data_source`, grain-compatible) that any reader can open.

What: `LiraSynthetic`, a tfds GeneratorBasedBuilder whose split s holds make_sample(s, i) for
i < num_examples[s], in index order (no write-time shuffling); `write` prepares it and
`data_source` / `record_to_sample` read it back into a real `synthetic.Sample`. Everything
runs without TensorFlow: only numpy-decodable features are used (tfds Tensor / Text / Sequence;
tfds Image would need TF to decode) and the GCS lookup of download_and_prepare is switched off,
so nothing is downloaded.

Record layout (K targets, N objects, S = image_size):
  index i64, image u8[S, S, 3], task / question / answer text (the first turn),
  followup_questions / followup_answers [F] text (later turns), expressions [K] text,
  masks u8[K, S, S] (target k = union of its objects; all zero for a no-target expression;
  K = 0 for 'attr' / 'vqa'), targets i32[K, M] (object indices of target k, padded with -1),
  object_shapes / object_colours [N] text, object_sizes f64[N], object_centers f64[N, 2] (y, x),
  object_masks u8[N, S, S] (visible pixels). The object fields make the Scene exact, so
  record_to_sample(record) equals make_sample field for field (the f64 fields are stored as raw
  bytes: tfds keeps unencoded floats as float32).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax.data import synthetic

NAME = 'lira_synthetic'


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """What to generate: num_examples per split ('train', 'val', 'test'; absent or 0 = no split)
  and the make_sample arguments."""
  num_examples: dict[str, int] = dataclasses.field(default_factory=dict)
  image_size: int = 256
  max_targets: int = 2
  world_seed: int = 0
  task_weights: dict[str, float] | None = None
  referring_rounds: int = 1
  absent_rate: float = 0.5


def make_config(*, num_examples: dict[str, int], image_size: int = 256, max_targets: int = 2,
                world_seed: int = 0, task_weights: dict[str, float] | None = None,
                referring_rounds: int = 1, absent_rate: float = 0.5,
                name: str | None = None) -> SyntheticConfig:
  """A SyntheticConfig whose default name spells out every argument (task_weights as a short
  hash, key order included: make_sample draws by it), so different worlds never share a
  directory or reuse each other's files."""
  unknown = set(num_examples) - set(synthetic.SPLITS)
  if unknown:
    raise ValueError(f'unknown splits {sorted(unknown)}; expected {list(synthetic.SPLITS)}')
  if name is None:
    splits = '_'.join(f'{s}{n}' for s, n in num_examples.items() if n)
    name = f'{image_size}px_k{max_targets}_seed{world_seed}_{splits}'
    if task_weights:
      digest = hashlib.sha1(json.dumps(task_weights).encode()).hexdigest()
      name += f'_w{digest[:8]}'
    if referring_rounds != 1:
      name += f'_r{referring_rounds}'
    if absent_rate != 0.5:
      name += f'_a{absent_rate:g}'
  return SyntheticConfig(name=name, num_examples=dict(num_examples), image_size=image_size,
                         max_targets=max_targets, world_seed=world_seed,
                         task_weights=task_weights, referring_rounds=referring_rounds,
                         absent_rate=absent_rate, description='make_sample(split, i) for i < num_examples[split]')


class LiraSynthetic(tfds.core.GeneratorBasedBuilder):
  """The synthetic world as tfds; build with `config=make_config(...)`. Writes array_record."""
  name = NAME
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Follow-up turns (multi-turn referring samples).'}
  # tfds 4.9.10 derives code_path through `importlib_resources`, a package it only requires
  # for Python < 3.9 (dataset_builder.py, DatasetBuilder.code_path): name the file directly.
  code_path = tfds.core.Path(__file__)

  def __init__(self, *, file_format=tfds.core.FileFormat.ARRAY_RECORD, **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    f, size = tfds.features, self.builder_config.image_size
    masks = lambda: f.Tensor(shape=(None, size, size), dtype=np.uint8, encoding='zlib')
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=f.FeaturesDict({
            'index': np.int64,
            'image': f.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding='bytes'),
            'task': f.Text(),
            'question': f.Text(),
            'answer': f.Text(),
            'followup_questions': f.Sequence(f.Text()),
            'followup_answers': f.Sequence(f.Text()),
            'expressions': f.Sequence(f.Text()),
            'masks': masks(),
            'targets': f.Tensor(shape=(None, None), dtype=np.int32, encoding='zlib'),
            'object_shapes': f.Sequence(f.Text()),
            'object_colours': f.Sequence(f.Text()),
            'object_sizes': f.Tensor(shape=(None,), dtype=np.float64, encoding='bytes'),
            'object_centers': f.Tensor(shape=(None, 2), dtype=np.float64, encoding='bytes'),
            'object_masks': masks(),
        }),
        disable_shuffling=True,  # record i of a split is make_sample(split, i)
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the world is generated
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.num_examples.items() if n}

  def _generate_examples(self, split: str, n: int):
    c = self.builder_config
    for i in range(n):
      sample = synthetic.make_sample(split, i, size=c.image_size, max_targets=c.max_targets,
                                     world_seed=c.world_seed, task_weights=c.task_weights,
                                     referring_rounds=c.referring_rounds,
                                     absent_rate=c.absent_rate)
      yield i, sample_to_example(sample, i)


def sample_to_example(sample: synthetic.Sample, index: int) -> dict:
  """The feature dict of one Sample (the record layout in the module docstring)."""
  objs, size = sample.scene.objects, sample.scene.image.shape[0]
  width = max((len(t) for t in sample.targets), default=0)
  targets = np.full((len(sample.targets), width), -1, np.int32)
  for k, t in enumerate(sample.targets):
    targets[k, :len(t)] = t
  object_masks = np.zeros((len(objs), size, size), np.uint8)
  for j, o in enumerate(objs):
    object_masks[j] = o.mask
  return dict(
      index=index, image=sample.scene.image, task=sample.task, question=sample.question,
      answer=sample.answer, followup_questions=[q for q, _ in sample.followups],
      followup_answers=[a for _, a in sample.followups], expressions=list(sample.expressions),
      masks=sample.masks.astype(np.uint8), targets=targets,
      object_shapes=[o.shape for o in objs], object_colours=[o.colour for o in objs],
      object_sizes=np.asarray([o.size for o in objs], np.float64),
      object_centers=np.asarray([o.center for o in objs], np.float64).reshape(-1, 2),
      object_masks=object_masks)


def write(data_dir: str | os.PathLike, *, num_examples: dict[str, int], image_size: int = 256,
          max_targets: int = 2, world_seed: int = 0, task_weights: dict[str, float] | None = None,
          referring_rounds: int = 1, absent_rate: float = 0.5,
          name: str | None = None) -> LiraSynthetic:
  """Generates the splits under data_dir/lira_synthetic/<config name>/1.0.0 as array_record
  (reused if already there) and returns the builder; builder.data_dir is the dataset dir."""
  config = make_config(num_examples=num_examples, image_size=image_size,
                       max_targets=max_targets, world_seed=world_seed,
                       task_weights=task_weights, referring_rounds=referring_rounds,
                       absent_rate=absent_rate, name=name)
  builder = LiraSynthetic(data_dir=os.fspath(data_dir), config=config)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def data_source(dataset_dir: str | os.PathLike, split: str):
  """Random-access source (len, [i], iteration) of one split; records decode to numpy (text
  as bytes). dataset_dir is the prepared directory, `write(...).data_dir`; reading needs only
  its features.json, not this builder class."""
  return tfds.builder_from_directory(os.fspath(dataset_dir)).as_data_source()[split]


def _text(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


def record_to_sample(record: dict) -> synthetic.Sample:
  """A decoded record -> the synthetic.Sample it was written from (scene, objects, targets), so
  that synthetic.encode_sample and Sample.masks work unchanged."""
  objects = tuple(
      synthetic.Obj(_text(shape), _text(colour), float(size), (float(cy), float(cx)),
                    np.asarray(mask, bool))
      for shape, colour, size, (cy, cx), mask in zip(
          record['object_shapes'], record['object_colours'], record['object_sizes'],
          record['object_centers'], record['object_masks']))
  scene = synthetic.Scene(np.asarray(record['image'], np.uint8), objects)
  targets = tuple(tuple(int(i) for i in row if i >= 0) for row in record['targets'])
  return synthetic.Sample(scene, _text(record['task']), _text(record['question']),
                          _text(record['answer']), tuple(map(_text, record['expressions'])),
                          targets, tuple(zip(map(_text, record['followup_questions']),
                                             map(_text, record['followup_answers']))))
