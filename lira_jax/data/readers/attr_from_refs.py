"""AttrEval-style items derived from RefCOCO-family refs, for when AttrEval's own files are not at
hand (the LIRA paper's appendix builds AttrEval from RefCOCO in this spirit; its exact lists and
question wording are not public, so the ones below are ours).

Rule. Take every ref of the split with at least two sentences. From (seed, ref_id) draw one
sentence: the expression. An attribute is a (kind, word) pair found in a sentence:
  colour    a word of COLOURS ('grey' read as 'gray'),
  location  a word of LOCATIONS ('centre' as 'center', 'leftmost' / 'rightmost' as left / right),
  category  the ref's COCO category name, as consecutive words.
Words are the sentence's lower-cased letter runs. The attributes that the ref's OTHER sentences
name but the expression does not are the ones the model must supply from the image. Each gives:
  (a) a RefSeg item: the expression as a referring example (question, ILVC answer and mask as in
      coco_refs), with meta attribute / kind, so that the [SEG] logits can be probed for the
      attribute word (lira_jax.eval.attr_eval.topk_accuracy);
  (b) a yes/no pair, two consecutive questions about the expression's object, one asking the
      true attribute (answer 'yes') and one a false attribute of the same kind (answer 'no'),
      in an order drawn from the item generator (lira_jax.eval.attr_eval.paired_accuracy).
      The false word is drawn from the fixed lists among those no sentence of the ref names:
      any other colour; the opposite location (left / right, top / bottom, upper / lower; left or
      right for middle / center); any other category of instances.json. Without such a word
      the attribute gets no pair.
Attributes are visited in sorted order, so the same files and seed give the same items.
"""
from __future__ import annotations

import dataclasses
import re

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax.data.readers.coco_refs import (image_info, load_instances, load_refs,
                                             referring_example)
from lira_jax.data.readers.example import Example, item_rng, with_image

COLOURS = ('red', 'orange', 'yellow', 'green', 'blue', 'purple', 'pink', 'brown', 'black',
           'white', 'gray', 'silver', 'gold', 'beige')
# Location word -> how a question says it.
LOCATIONS = {'left': 'on the left', 'right': 'on the right', 'top': 'at the top',
             'bottom': 'at the bottom', 'middle': 'in the middle', 'center': 'in the center',
             'upper': 'in the upper part', 'lower': 'in the lower part'}
OPPOSITES = {'left': ('right',), 'right': ('left',), 'top': ('bottom',), 'bottom': ('top',),
             'upper': ('lower',), 'lower': ('upper',), 'middle': ('left', 'right'),
             'center': ('left', 'right')}
SPELLINGS = {'grey': 'gray', 'centre': 'center', 'leftmost': 'left', 'rightmost': 'right'}
QUESTION = ('Is the object described as "{}" {}?\n'
            'Answer the question using a single word or phrase.')


@dataclasses.dataclass(frozen=True)
class AttrItems:
  yes_no: list[Example]  # consecutive pairs (2k, 2k + 1)
  refseg: list[Example]  # one per missing attribute


def words(text: str) -> list[str]:
  return [SPELLINGS.get(w, w) for w in re.findall(r'[a-z]+', text.lower())]


def _names(ws: list[str], phrase: str) -> bool:
  """Whether the word list holds the phrase's words consecutively."""
  target = words(phrase)
  return bool(target) and any(ws[i:i + len(target)] == target for i in range(len(ws)))


def attributes(sentence: str, category: str) -> set[tuple[str, str]]:
  ws = words(sentence)
  out = {('colour', w) for w in ws if w in COLOURS}
  out |= {('location', w) for w in ws if w in LOCATIONS}
  if _names(ws, category):
    out.add(('category', category))
  return out


def _phrase(kind: str, word: str) -> str:
  if kind == 'colour':
    return word
  if kind == 'location':
    return LOCATIONS[word]
  return ('an ' if word[0] in 'aeiou' else 'a ') + word


def _false_words(kind: str, word: str, sentences: list[list[str]], categories: list[str]
                 ) -> list[str]:
  """Same-kind words that no sentence of the ref names."""
  pool = {'colour': COLOURS, 'location': OPPOSITES.get(word, ()), 'category': categories}[kind]
  return [w for w in pool if w != word and not any(_names(ws, w) for ws in sentences)]


def derive_attr_items(refs_path: str, instances_path: str, image_dir: str, split: str, *,
                      seed: int = 0, name: str = 'attr_refs') -> AttrItems:
  instances = load_instances(instances_path)
  categories = sorted(set(instances.categories.values()))
  yes_no, refseg = [], []
  for ref in load_refs(refs_path):
    sentences = [s['sent'] for s in ref['sentences']]
    if ref['split'] != split or len(sentences) < 2:
      continue
    category = instances.categories.get(ref['category_id'], '')
    rng = item_rng(seed, name, ref['ref_id'])
    k = rng.randrange(len(sentences))
    others = set().union(*(attributes(s, category) for i, s in enumerate(sentences) if i != k))
    missing = sorted(others - attributes(sentences[k], category))
    if not missing:
      continue
    base = referring_example(name, ref, k, instances, image_dir)
    path, _, _ = image_info(instances, image_dir, ref['image_id'])
    split_words = [words(s) for s in sentences]
    for kind, word in missing:
      refseg.append(dataclasses.replace(base, id=f'{base.id}/{kind}/{word}',
                                        meta=dict(base.meta, attribute=word, kind=kind)))
      false = _false_words(kind, word, split_words, categories)
      if not false:
        continue
      asked = [(word, 'yes'), (rng.choice(false), 'no')]
      if rng.random() < 0.5:
        asked.reverse()
      pair = len(yes_no) // 2
      for asked_word, label in asked:
        question = with_image(QUESTION.format(sentences[k], _phrase(kind, asked_word)))
        meta = dict(pair=pair, question_id=len(yes_no), label=label, kind=kind, attribute=word,
                    asked=asked_word, expression=sentences[k], ref_id=ref['ref_id'],
                    image_id=ref['image_id'])
        yes_no.append(Example(name, f'{ref["ref_id"]}/{kind}/{word}/{label}', path,
                              ((question, label),), meta=meta))
  return AttrItems(yes_no, refseg)
