"""CHAIR object hallucination of image captions (evaluation.md §2.5; the LisaAnne/Hallucination
metric as adapted by OPERA and LIRA).

Objects are COCO "node words": each of the 80 categories with a list of synonyms, possibly of
two words ("traffic light"). The synonym table and the evaluated image ids are inputs: LIRA drew
its 500 val2014 images from a directory listing, which is not reproducible, so the id list must
be frozen by the caller. Per caption, the mentioned objects (node words, with repeats) are
compared with the image's ground-truth object set (the node words of its instance categories
and of the objects its human captions mention):
  CHAIR_S = captions with at least one hallucinated object / captions,
  CHAIR_I = hallucinated mentions / all object mentions,
  Recall  = Σ ground-truth objects mentioned / Σ ground-truth objects,
  Len     = mean word tokens per caption (before pair merging).
A ratio whose denominator is 0 is reported as 0.
"""
from __future__ import annotations

import re
from typing import Callable, Collection, Iterable, Mapping, Sequence

_ANIMALS = ('bird', 'cat', 'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe',
            'animal', 'cub')
# Two-word phrases read as one word before synonym lookup: "baby cat" is a cat, "toilet seat"
# is not a chair, and pairs outside the vocabulary ("train track") hide both their words.
COMPOUNDS: dict[str, str] = {
    **{f'{age} {a}': a for age in ('baby', 'adult') for a in _ANIMALS},
    'passenger jet': 'jet', 'passenger train': 'train', 'bow tie': 'tie',
    'toilet seat': 'toilet', 'home plate': 'home plate', 'train track': 'train track',
}

_WORD = re.compile(r'[a-z0-9]+')


def caption_words(caption: str, lemmatize: Callable[[str], str] | None = None) -> list[str]:
  """Lower-cased runs of letters and digits, each passed through lemmatize.

  The reference tokenises with NLTK and lemmatises with WordNet (so that 'dogs' counts as
  'dog'); pass a lemmatizer to match it. Splitting at every other character also splits
  "dog's" and "hot-dog", which NLTK keeps whole, so such mentions are found here."""
  words = _WORD.findall(caption.lower())
  return [lemmatize(w) for w in words] if lemmatize else words


def extract_mentions(caption: str, synonyms: Mapping[str, Sequence[str]], *,
                     compounds: Mapping[str, str] | None = None,
                     lemmatize: Callable[[str], str] | None = None) -> list[str]:
  """Node words of the objects a caption mentions, in order, with repeats.

  synonyms maps each node word to its synonyms (the node word counts as one of its own).
  compounds (default COMPOUNDS, merged with the synonyms of two words) maps a word pair to
  the word it stands for."""
  node_of = {node: node for node in synonyms}
  node_of.update({s: node for node, syns in synonyms.items() for s in syns})
  pairs = {s: s for s in node_of if ' ' in s}
  pairs.update(COMPOUNDS if compounds is None else compounds)
  words = caption_words(caption, lemmatize)
  merged, i = [], 0
  while i < len(words):
    pair = ' '.join(words[i:i + 2])
    if pair in pairs:
      merged.append(pairs[pair])
      i += 2
    else:
      merged.append(words[i])
      i += 1
  # "the seat of the toilet" is not a chair either.
  if 'toilet' in merged and 'seat' in merged:
    merged = [w for w in merged if w != 'seat']
  return [node_of[w] for w in merged if w in node_of]


def chair_metrics(mentions: Sequence[Sequence[str]], gt_objects: Sequence[Collection[str]],
                  lengths: Sequence[int] | None = None) -> dict[str, float]:
  """CHAIR_S, CHAIR_I, Recall (and Len when lengths, the words per caption, are given) of
  captions with mentioned node words mentions[i] and ground-truth node words gt_objects[i]."""
  if len(mentions) != len(gt_objects):
    raise ValueError(f'{len(mentions)} captions for {len(gt_objects)} object sets')
  hallucinated_caps = hallucinated = total = covered = gt_total = 0
  for said, truth in zip(mentions, gt_objects):
    truth = set(truth)
    wrong = sum(m not in truth for m in said)
    hallucinated_caps += wrong > 0
    hallucinated += wrong
    total += len(said)
    covered += len(truth.intersection(said))
    gt_total += len(truth)
  n = len(mentions)
  out = dict(chair_s=hallucinated_caps / n if n else 0.0,
             chair_i=hallucinated / total if total else 0.0,
             recall=covered / gt_total if gt_total else 0.0, count=float(n))
  if lengths is not None:
    out['len'] = sum(lengths) / n if n else 0.0
  return out


def image_gt_objects(categories: Iterable[str], captions: Iterable[str],
               synonyms: Mapping[str, Sequence[str]], **extract_kwargs) -> set[str]:
  """An image's ground-truth node words: its instance category names (mapped through the
  synonyms) and the objects its human captions mention."""
  node_of = {s: node for node, syns in synonyms.items() for s in (node, *syns)}
  objects = {node_of[c] for c in categories}
  for caption in captions:
    objects.update(extract_mentions(caption, synonyms, **extract_kwargs))
  return objects


def chair_for_images(image_ids: Sequence, captions: Mapping, gt: Mapping,
                     synonyms: Mapping[str, Sequence[str]], **extract_kwargs
                     ) -> dict[str, float]:
  """CHAIR over exactly the frozen image_ids: captions[id] the generated caption, gt[id] its
  ground-truth node words. A missing caption is an error, not a skipped image."""
  missing = [i for i in image_ids if i not in captions]
  if missing:
    raise KeyError(f'no caption for {len(missing)} image(s), e.g. {missing[0]!r}')
  mentions = [extract_mentions(captions[i], synonyms, **extract_kwargs) for i in image_ids]
  lengths = [len(caption_words(captions[i])) for i in image_ids]
  return chair_metrics(mentions, [gt[i] for i in image_ids], lengths)
