"""GSVA's [REJ]: multi-target conversations in which absent targets answer [REJ], the per-target
flags read back from answers, the mask-loss weights, and the evaluation's rejection rule.

Training (GSVA, evaluation.md §1.2-1.5): one prompt lists all sampled expressions (cleaned:
whitespace and leading/trailing periods stripped; lower-cased in the question only), the answer
has one part per expression in mask order (lira_tokens.gres_answer), ending in [SEG] when the
GT mask has at least one pixel and in [REJ] otherwise. A sample whose targets are all absent is
dropped. [REJ] is supervised by the LM cross-entropy only: it gets no mask and no mask loss
(mask_loss_weights). GSVA additionally counted [REJ] slots in its mask normaliser; LIRA
normalises by its [SEG] count, which is the sum of these weights.

Evaluation (§1.6), teacher-forced on the GT answer `Sure,{t}:[SEG], {t}:[REJ].`: at each GT
[SEG]/[REJ] token the argmax one position earlier decides: a GT [SEG] is kept as "target" only if
that argmax is [SEG], a GT [REJ] is "rejected" only if it is [REJ]. Masks then come from a second
pass with every [REJ] turned into [SEG] (reeval_ids). Per expression: empty GT + rejected = no-
target TP (gIoU += 1); empty GT + target = FN (gIoU += 0, the predicted area joins the cIoU
union); non-empty GT + rejected = FP and non-empty + target = TN, both scored with the mask's I/U
(lira_jax.eval.seg_metrics.GresMeter('gsva') sums these).

This model decodes a [SEG] from the hidden state where [SEG] is the input (LIRA's convention), not
one position earlier as GSVA does; the answer formats and rules above are unchanged by that.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax.lira_tokens import GRES_ANSWER_FORMATS, REJ, SEG, gres_answer
from lira_jax.sequence import SequencePlan
from lira_jax.tokens import IMAGE_PLACEHOLDER

# GSVA's SHORT_QUESTION_LIST_MODE4; one is drawn per sample.
GRES_QUESTIONS: tuple[str, ...] = (
    IMAGE_PLACEHOLDER + '\nCan you segment {} in this image?',
    IMAGE_PLACEHOLDER + '\nPlease segment {} in this image.',
    IMAGE_PLACEHOLDER + '\nWhat are {} in this image? Please respond with segmentation masks.',
    IMAGE_PLACEHOLDER + '\nWhat are {} in this image? Please output segmentation masks.',
)
# The evaluation prompt: note the space after the newline and none before "in".
GRES_EVAL_QUESTION = (IMAGE_PLACEHOLDER
                      + '\n What are {}in this image? Please output segmentation masks.')


def clean_expression(text: str) -> str:
  """Whitespace, then leading/trailing periods, stripped (case kept)."""
  return text.strip().strip('.')


def is_present(mask: np.ndarray) -> bool:
  """A target exists when its GT mask has at least one pixel."""
  return bool(np.asarray(mask).sum() >= 1)


def gres_question(expressions: Sequence[str], choice: int) -> str:
  return GRES_QUESTIONS[choice].format(', '.join(map(clean_expression, expressions)).lower())


def gres_eval_question(expressions: Sequence[str]) -> str:
  cleaned = [clean_expression(e.strip().lower()) for e in expressions]
  return GRES_EVAL_QUESTION.format(', '.join(cleaned))


def grefcoco_conversation(expressions: Sequence[str], present: Sequence[bool], rng: random.Random
                          ) -> tuple[str, str] | None:
  """(question, answer) of one gRefCOCO training sample, or None when no target is present (the
  original then draws another image). Question and answer formats are drawn independently."""
  if len(expressions) != len(present):
    raise ValueError(f'{len(expressions)} expressions but {len(present)} presence flags')
  if not any(present):
    return None
  choice = rng.randrange(len(GRES_ANSWER_FORMATS))
  question = gres_question(expressions, rng.randrange(len(GRES_QUESTIONS)))
  texts = [clean_expression(e) for e in expressions]
  return question, gres_answer(list(zip(texts, present)), choice)


_TARGET_TOKEN = re.compile(re.escape(SEG) + '|' + re.escape(REJ))


def parse_targets(answer: str) -> list[bool]:
  """Per-target presence read from an answer string: [SEG] -> True, [REJ] -> False, in order."""
  return [m.group() == SEG for m in _TARGET_TOKEN.finditer(answer)]


def target_flags(ids: Sequence[int], seg_id: int, rej_id: int) -> list[bool]:
  """The same from token ids."""
  return [int(i) == seg_id for i in ids if int(i) in (seg_id, rej_id)]


def mask_loss_weights(plan: SequencePlan) -> jax.Array:
  """f32[B, M]: 1 for each real [SEG] slot, 0 for [REJ] and empty slots."""
  return (plan.seg_valid & ~plan.seg_is_rej).astype(jnp.float32)


def reeval_ids(ids: jax.Array, seg_id: int, rej_id: int) -> jax.Array:
  """Every [REJ] replaced by [SEG] (the mask pass of the evaluation)."""
  return jnp.where(ids == rej_id, seg_id, ids)


def teacher_forced_rejection(pred_ids: jax.Array, plan: SequencePlan, seg_id: int, rej_id: int
                             ) -> jax.Array:
  """bool[B, M]: predicted "no target" per [SEG]/[REJ] slot of a teacher-forced pass.

  pred_ids i32[B, L]: argmax of the logits at every slot of the packed sequence (the token each
  slot predicts for the next one). False on empty slots.
  """
  prev = jnp.take_along_axis(pred_ids, jnp.maximum(plan.seg_index - 1, 0), axis=1)
  rejected = jnp.where(plan.seg_is_rej, prev == rej_id, prev != seg_id)
  return rejected & plan.seg_valid
