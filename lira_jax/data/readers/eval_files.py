"""Evaluation files of POPE, CHAIR and AttrEval (evaluation.md §2.4, §2.5, §2.7) as Example
lists (small and read once, so a malformed file raises instead of being skipped: a silently
shorter evaluation set would change the metric).

POPE (LLaVA's protocol): `llava_pope_test.jsonl`, lines {question_id, image, text, category};
`text` already ends in "\\nAnswer the question using a single word or phrase.". Labels come from
`coco_pope_{category}.json`, lines {question_id, image, text, label}, matched to the questions of
that category by position, as LLaVA's eval_pope.py matches them. A question line that carries
its own `label` (the original POPE files) needs no label file. Answer: the label.

CHAIR: a frozen list of COCO image ids (LIRA drew 500 val2014 images from a directory listing,
which is not reproducible), COCO instances files (image file names and object categories) and
COCO caption files, train2014 and val2014 combined as the reference does. Prompt: "Provide an
in-depth description of this image." (what LIRA's evaluate_chair.py sends); no reference answer.
meta holds the image's category names and human captions; chair_ground_truth turns them into
lira_jax.eval.chair's ground-truth node words.

AttrEval (`refcoco_attri.jsonl`): lines {image, question, question_id, answer}, consecutive
lines (2k, 2k + 1) forming a pair (lira_jax.eval.attr_eval.paired_accuracy); the question is
used as it is (LIRA adds no suffix).
"""
from __future__ import annotations

import collections
import json
import os
from typing import Mapping, Sequence

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax.data.readers.example import Example, with_image
from lira_jax.eval import chair

CHAIR_QUESTION = 'Provide an in-depth description of this image.'


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_pope(question_file: str, image_dir: str, label_files: Mapping[str, str] | None = None,
              *, name: str = 'pope') -> list[Example]:
  """label_files: category -> coco_pope_{category}.json path."""
  labels = {c: [row['label'] for row in read_jsonl(p)] for c, p in (label_files or {}).items()}
  used = collections.Counter()
  out = []
  for row in read_jsonl(question_file):
    category = row.get('category', '')
    label = row.get('label')
    if label is None:
      if used[category] >= len(labels.get(category, ())):
        raise ValueError(f'no label for question {row["question_id"]} (category {category!r})')
      label = labels[category][used[category]]
      used[category] += 1
    meta = dict(question_id=row['question_id'], category=category, label=label,
                question=row['text'])
    out.append(Example(name, str(row['question_id']), os.path.join(image_dir, row['image']),
                       ((with_image(row['text']), label),), meta=meta))
  for category, values in labels.items():
    if used[category] != len(values):
      raise ValueError(f'{len(values)} {category!r} labels for {used[category]} questions')
  return out


def read_attr_eval(path: str, image_dir: str, *, name: str = 'attr_eval') -> list[Example]:
  rows = read_jsonl(path)
  if len(rows) % 2:
    raise ValueError(f'{len(rows)} AttrEval questions do not form consecutive pairs')
  return [Example(name, str(row['question_id']), os.path.join(image_dir, row['image']),
                  ((with_image(row['question']), row['answer']),),
                  meta=dict(question_id=row['question_id'], pair=i // 2, answer=row['answer']))
          for i, row in enumerate(rows)]


def read_image_ids(path: str) -> list[int]:
  """A frozen id list: a JSON list, or ids separated by whitespace."""
  with open(path) as f:
    text = f.read()
  return [int(i) for i in (json.loads(text) if text.lstrip().startswith('[') else text.split())]


def read_chair(image_ids: Sequence[int] | str, instances_files: Sequence[str],
               caption_files: Sequence[str], image_dir: str, *, name: str = 'chair'
               ) -> list[Example]:
  """image_ids: the ids, or a file of them (read_image_ids). Order is kept."""
  ids = read_image_ids(image_ids) if isinstance(image_ids, str) else [int(i) for i in image_ids]
  wanted = set(ids)
  files, categories = {}, collections.defaultdict(set)
  for path in instances_files:
    with open(path) as f:
      data = json.load(f)
    names = {c['id']: c['name'] for c in data['categories']}
    files.update({im['id']: im['file_name'] for im in data['images'] if im['id'] in wanted})
    for ann in data['annotations']:
      if ann['image_id'] in wanted:
        categories[ann['image_id']].add(names[ann['category_id']])
  captions = collections.defaultdict(list)
  for path in caption_files:
    with open(path) as f:
      for ann in json.load(f)['annotations']:
        if ann['image_id'] in wanted:
          captions[ann['image_id']].append(ann['caption'])
  missing = [i for i in ids if i not in files]
  if missing:
    raise KeyError(f'{len(missing)} image id(s) not in the instances files, e.g. {missing[0]}')
  return [Example(name, str(i), os.path.join(image_dir, files[i]),
                  ((with_image(CHAIR_QUESTION), ''),),
                  meta=dict(image_id=i, categories=sorted(categories[i]), captions=captions[i]))
          for i in ids]


def chair_ground_truth(examples: Sequence[Example], synonyms: Mapping[str, Sequence[str]],
                       **extract_kwargs) -> dict[int, set[str]]:
  """image id -> ground-truth node words (chair.image_gt_objects) of read_chair's examples."""
  return {ex.meta['image_id']: chair.image_gt_objects(ex.meta['categories'], ex.meta['captions'],
                                                      synonyms, **extract_kwargs)
          for ex in examples}
