"""LIRA's special tokens, the answer formats built from them, and the vocabulary-resize rule.

LIRA adds six tokens to the 92553-entry InternVL2 vocabulary, in this order: [SEG] 92553, <p> 92554,
</p> 92555, <region> 92556, <mark> 92557, <image_id> 92558. We append GSVA's [REJ] after them
(92559). Answer formats, exactly as the released data code writes them:

  referring (LIRA):  `[SEG]<image_id><image> <p> {expression.lower()} </p> [SEG].`
  GCG (LIRA):        every grounded span of the caption becomes
                     `[SEG]<image_id><image> <p> {span} </p> [SEG]` in place
  gRefCOCO (GSVA):   `{start} {part_1}, {part_2}, ...{end}`, a part per target; an absent target's
                     part has its `SEG` replaced by `REJ` (see GRES_ANSWER_FORMATS)

Vocabulary resize (what the released code did when it added its tokens, transformers 4.37):
new input-embedding rows come from the model's default init, normal(0, initializer_range=0.02);
new LM-head rows are then overwritten with the mean of the old LM-head rows. With a tied head
(Qwen2) that write lands in the shared table, so the new rows end up as the mean. Rule 'mean'
uses the mean for both matrices (what LIRA's loader does when it pads a smaller checkpoint).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax.tokens import IMAGE_PLACEHOLDER, Tokenizer

SEG, P_START, P_END, REGION, MARK = '[SEG]', '<p>', '</p>', '<region>', '<mark>'
IMAGE_ID, REJ = '<image_id>', '[REJ]'

# (token, released id) in the order they are added; the ids hold on the InternVL2 tokenizer.
LIRA_SPECIAL_TOKENS: tuple[tuple[str, int], ...] = (
    (SEG, 92553), (P_START, 92554), (P_END, 92555), (REGION, 92556), (MARK, 92557),
    (IMAGE_ID, 92558))
REJ_TOKEN: tuple[str, int] = (REJ, 92559)

# cfg.tokens key -> vocabulary entry.
TOKEN_CONFIG_NAMES = {
    'seg': SEG, 'p_start': P_START, 'p_end': P_END, 'region': REGION, 'mark': MARK,
    'image_id': IMAGE_ID, 'rej': REJ, 'im_end': '<|im_end|>', 'im_start': '<|im_start|>'}

# One grounded phrase with ILVC: the first [SEG] is decoded from global context, the local image
# of its mask fills `<image>`, the second [SEG] comes after the phrase.
ILVC_PHRASE = SEG + IMAGE_ID + IMAGE_PLACEHOLDER + ' ' + P_START + ' {} ' + P_END + ' ' + SEG

# GSVA's five (start, per-target template, end) triples; one index is drawn per sample.
GRES_ANSWER_FORMATS: tuple[tuple[str, str, str], ...] = (
    ('The segmentation results are', '{} [SEG]', '.'),
    ('Sure, they are', '{}:[SEG]', '.'),
    ('Sure,', 'the mask of {} is [SEG]', '.'),
    ('Sure,', 'the segmentation of {} is [SEG]', '.'),
    ('Sure,', 'the referred {} is [SEG]', '.'),
)


def add_lira_tokens(tokenizer: Tokenizer, *, with_rej: bool = True) -> dict[str, int]:
  """Adds the LIRA tokens (then [REJ]) the way transformers' `add_tokens` does: a token already in
  the vocabulary keeps its id, each new one takes the next free id (the current vocab_size).
  On the InternVL2 tokenizer this yields the released ids. Returns token -> id."""
  names = [t for t, _ in LIRA_SPECIAL_TOKENS] + ([REJ] if with_rej else [])
  for name in names:
    if name not in tokenizer.special_tokens:
      tokenizer.add_special_tokens({name: tokenizer.vocab_size})
  return {name: tokenizer.token_id(name) for name in names}


def token_config(tokenizer: Tokenizer) -> dict[str, int]:
  """The cfg.tokens dict (seg, p_start, ..., rej, im_end, im_start, bos, eos) by vocabulary
  lookup, e.g. for tiny configs built on a test tokenizer."""
  ids = {key: tokenizer.token_id(token) for key, token in TOKEN_CONFIG_NAMES.items()}
  return dict(ids, bos=tokenizer.bos_id, eos=tokenizer.eos_id)


def referring_question(expression: str) -> str:
  """The referring-segmentation instruction (train and eval), expression stripped, lower case."""
  return f'Please segment {expression.strip().lower()}.'


def referring_answer(expression: str) -> str:
  """`[SEG]<image_id><image> <p> {expression} </p> [SEG].` with the expression stripped and
  lower-cased, as the released data code does."""
  return ILVC_PHRASE.format(expression.strip().lower()) + '.'


def gcg_answer(caption: str, spans: Sequence[tuple[int, int]]) -> str:
  """Caption with each span [start, end) replaced in place by ILVC_PHRASE(span text).

  Replacement runs right to left (spans sorted by start, descending) so earlier offsets stay
  valid. Targets (masks, local images) are in order of increasing start.
  """
  for start, end in sorted(spans, key=lambda s: s[0], reverse=True):
    caption = caption[:start] + ILVC_PHRASE.format(caption[start:end]) + caption[end:]
  return caption


def gres_answer(targets: Sequence[tuple[str, bool]], choice: int) -> str:
  """GSVA's multi-target training answer. targets: (text, present) in mask order, text already
  cleaned (stripped of whitespace and of leading/trailing periods; case kept). An absent
  target's part has every literal `SEG` replaced by `REJ`, as the original does (a `SEG` inside
  the text itself would be replaced too).

  Example (choice 2): `Sure, the mask of two dogs is [SEG], the mask of the kid is [REJ].`
  """
  start, template, end = GRES_ANSWER_FORMATS[choice]
  parts = []
  for text, present in targets:
    part = template.format(text)
    parts.append(part if present else part.replace('SEG', 'REJ'))
  return start + ' ' + ', '.join(parts) + end


def gres_eval_answer(targets: Sequence[tuple[str, bool]]) -> str:
  """GSVA's teacher-forced evaluation answer: `Sure,` + `{t}:[SEG]` / `{t}:[REJ]` joined by `, `
  + `.` (no space after `Sure,`, unlike training format 1)."""
  return 'Sure,' + ', '.join(f'{t}:{SEG if present else REJ}' for t, present in targets) + '.'


def resize_vocab(embedding: jax.Array, lm_head: jax.Array | None, new_vocab: int,
                 rng: jax.Array, rule: str = 'released', init_std: float = 0.02
                 ) -> tuple[jax.Array, jax.Array | None]:
  """Grows the input embedding f32[V, D] and the LM head f32[D, V] (None when tied) to new_vocab.

  rule 'released': new embedding rows ~ normal(0, init_std) (drawn from `rng`), new LM-head
  columns = mean of the old ones; tied: new rows = mean (the head write wins). rule 'mean': mean
  for both. Old rows are kept exactly; means are taken in float32 and cast back.
  """
  if rule not in ('released', 'mean'):
    raise ValueError(f"unknown resize rule {rule!r}; expected 'released' or 'mean'")
  vocab, dim = embedding.shape
  added = new_vocab - vocab
  if added < 0:
    raise ValueError(f'cannot shrink the vocabulary from {vocab} to {new_vocab}')
  if lm_head is not None and lm_head.shape != (dim, vocab):
    raise ValueError(f'lm_head shape {lm_head.shape} does not match embedding {embedding.shape}')
  if added == 0:
    return embedding, lm_head

  def mean_rows(table):  # table f32[V, D] -> f32[added, D]
    mean = jnp.mean(jnp.asarray(table, jnp.float32), axis=0, keepdims=True)
    return jnp.broadcast_to(mean, (added, table.shape[1])).astype(table.dtype)

  if rule == 'mean' or lm_head is None:
    new_rows = mean_rows(embedding)
  else:
    noise = jax.random.normal(rng, (added, dim), jnp.float32)
    new_rows = (init_std * noise).astype(embedding.dtype)
  embedding = jnp.concatenate([jnp.asarray(embedding), new_rows], axis=0)
  if lm_head is not None:
    lm_head = jnp.concatenate([jnp.asarray(lm_head), mean_rows(lm_head.T).T], axis=1)
  return embedding, lm_head
