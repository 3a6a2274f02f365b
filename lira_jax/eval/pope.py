"""POPE object-hallucination metrics with LLaVA's yes/no parsing (evaluation.md §2.4).

An answer is cut at its first '.', commas are dropped and it is split on single spaces; it means
"no" when one of the words is exactly 'No', 'no' or 'not', and "yes" otherwise (so 'NO' and an
empty answer both count as yes, as in the reference script). A label is negative only when it
is 'no'. "Yes" is the positive class; a ratio whose denominator is 0 is reported as 0.
"""
from __future__ import annotations

from typing import Sequence

_NO_WORDS = frozenset(('No', 'no', 'not'))


def parse_yes_no(answer: str) -> bool:
  """True for yes, False for no."""
  words = answer.split('.')[0].replace(',', '').split(' ')
  return not _NO_WORDS.intersection(words)


def _ratio(num: int | float, den: int | float) -> float:
  return num / den if den else 0.0


def pope_metrics(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
  """Accuracy, precision, recall, F1 and yes-ratio of one split; answers are the model's raw
  texts, labels 'yes' / 'no', in the same order."""
  if len(answers) != len(labels):
    raise ValueError(f'{len(answers)} answers for {len(labels)} labels')
  preds = [parse_yes_no(a) for a in answers]
  truth = [label != 'no' for label in labels]
  tp = sum(p and t for p, t in zip(preds, truth))
  fp = sum(p and not t for p, t in zip(preds, truth))
  tn = sum(not p and not t for p, t in zip(preds, truth))
  fn = sum(not p and t for p, t in zip(preds, truth))
  precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
  return dict(accuracy=_ratio(tp + tn, len(preds)), precision=precision, recall=recall,
              f1=_ratio(2 * precision * recall, precision + recall),
              yes_ratio=_ratio(tp + fp, len(preds)), tp=float(tp), fp=float(fp), tn=float(tn),
              fn=float(fn), count=float(len(preds)))
