"""LIRA's AttrEval (evaluation.md §2.7).

Segmentation side (Acc_1 / Acc_3, the paper's numbers; echo840/LIRA ships no script): a sample
is a hit at k when the attribute word's token is among the k largest next-token logits at the
[SEG] position. A token tied with the k-th logit counts as inside the top k (rank = number of
strictly larger logits).

VQA side (`refcoco_attri`, metric accuracy2 in LIRA's evaluate_vqa.py): questions come in
consecutive pairs (0, 1), (2, 3), ...; a pair scores 1 only when both answers equal their
annotations after stripping and lower-casing.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def attribute_ranks(logits: np.ndarray, attr_ids: np.ndarray) -> np.ndarray:
  """int64[N]: how many vocabulary logits beat the attribute token's, for logits f32[N, V]
  and attr_ids int[N]."""
  logits = np.asarray(logits)
  attr_ids = np.asarray(attr_ids, np.int64).reshape(-1)
  if logits.ndim != 2 or logits.shape[0] != attr_ids.shape[0]:
    raise ValueError(f'logits {logits.shape} vs attr_ids {attr_ids.shape}: want [N, V] and [N]')
  if attr_ids.size and (attr_ids.min() < 0 or attr_ids.max() >= logits.shape[1]):
    raise ValueError('an attribute token id is outside the vocabulary')
  target = logits[np.arange(attr_ids.size), attr_ids]
  return np.sum(logits > target[:, None], axis=1, dtype=np.int64)


def topk_accuracy(logits: np.ndarray, attr_ids: np.ndarray, ks: Sequence[int] = (1, 3)
                  ) -> dict[str, float]:
  """{'acc_1': ..., 'acc_3': ...}: share of samples whose attribute token is in the top k."""
  ranks = attribute_ranks(logits, attr_ids)
  return {f'acc_{k}': float(np.mean(ranks < k)) if ranks.size else 0.0 for k in ks}


def paired_accuracy(answers: Sequence[str], annotations: Sequence[str]) -> float:
  """Share of consecutive question pairs answered right twice (0 for none)."""
  if len(answers) != len(annotations):
    raise ValueError(f'{len(answers)} answers for {len(annotations)} annotations')
  if len(answers) % 2:
    raise ValueError(f'{len(answers)} questions do not form pairs')
  right = [a.strip().lower() == b.strip().lower() for a, b in zip(answers, annotations)]
  pairs = len(right) // 2
  return sum(right[2 * i] and right[2 * i + 1] for i in range(pairs)) / pairs if pairs else 0.0
