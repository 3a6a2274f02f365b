"""VQAv2 soft accuracy with the EvalAI answer normalisation (evaluation.md §2.6).

LIRA scores VQAv2 val with the TextVQA-style evaluator: every answer, the prediction and all ten
human answers alike, is normalised (lower case, punctuation, number words to digits, articles
dropped, apostrophe-less contractions restored), and a prediction scores
  acc(a) = 1/10 · Σ_j min(1, #{k != j : h_k = a} / 3),
the mean of the "≥ 3 humans agree" rule over the ten leave-one-annotator-out subsets. The
official VQA evaluation normalises human answers only when they disagree; the difference shows
only on questions whose ten answers are identical up to normalisation.
"""
from __future__ import annotations

import re
from typing import Sequence

# Contracted forms the official table restores when written without one apostrophe. Single
# contractions ("dont") and double ones missing one of their apostrophes ("couldnt've") map back;
# forms missing every apostrophe of a double contraction ("couldntve") do not.
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am "
    "mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at "
    "shan't she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's "
    "someone'd someone'd've someone'll someone's something'd something'd've something'll "
    "that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas "
    "wasn't we'd've we've weren't what'll what're what's what've when's where'd where's "
    "where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't "
    "wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've").split()


def _contractions() -> dict[str, str]:
  table = {}
  for word in _CONTRACTED:
    for i, ch in enumerate(word):
      if ch == "'":
        table[word[:i] + word[i + 1:]] = word
  # The official table maps this one the other way round; kept so that scores match.
  table["somebody'd"] = 'somebodyd'
  return table


CONTRACTIONS = _contractions()
NUMBER_WORDS = dict(none='0', zero='0', one='1', two='2', three='3', four='4', five='5',
                    six='6', seven='7', eight='8', nine='9', ten='10')
ARTICLES = frozenset(('a', 'an', 'the'))
PUNCTUATION = (';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<',
               '@', '`', ',', '?', '!')
# A period that is not part of a decimal number.
_PERIOD = re.compile(r'\.(?!\d)')


def normalize_answer(answer: str) -> str:
  """The EvalAI answer processor: 'The Two dogs.' -> '2 dogs', 'T-shirt' -> 't shirt'."""
  text = answer.lower().replace(',', '').replace('?', '').replace("'s", " 's").strip()
  text = text.replace('\n', ' ').replace('\t', ' ').strip()
  # A mark next to a space separates nothing and is dropped; inside a word it splits it.
  out = text
  for p in PUNCTUATION:
    out = out.replace(p, '' if (p + ' ' in text or ' ' + p in text) else ' ')
  out = _PERIOD.sub('', out)
  words = [NUMBER_WORDS.get(w, w) for w in out.split()]
  return ' '.join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def soft_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
  """VQA accuracy of one prediction against its ten human answers (any count n >= 1 works:
  the mean over the n leave-one-out subsets)."""
  if not human_answers:
    raise ValueError('a question needs human answers')
  pred = normalize_answer(prediction)
  humans = [normalize_answer(h) for h in human_answers]
  matches = sum(h == pred for h in humans)
  # Leaving out a matching annotator leaves matches - 1 agreeing, any other leaves matches.
  total = matches * min(1.0, (matches - 1) / 3) + (len(humans) - matches) * min(1.0, matches / 3)
  return total / len(humans)


def vqa_accuracy(predictions: Sequence[str], human_answers: Sequence[Sequence[str]]) -> float:
  """Mean soft accuracy over questions (0 for none)."""
  if len(predictions) != len(human_answers):
    raise ValueError(f'{len(predictions)} predictions for {len(human_answers)} questions')
  if not predictions:
    return 0.0
  return sum(soft_accuracy(p, h) for p, h in zip(predictions, human_answers)) / len(predictions)
