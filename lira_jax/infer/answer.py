"""Reading a generated answer back on the host: its text and the targets it grounded.

Slots: the k-th [SEG] or [REJ] of the generated tokens is [SEG]/[REJ] slot k of
lira_generate.generate (same order, same count). Target grouping follows the two answer styles:
  ILVC (LIRA):  `[SEG]<image_id><image> <p> phrase </p> [SEG]`: one target, phrase between <p> and
                </p>, mask from the first [SEG] (the second is skipped, LIRA's inference rule);
  GSVA:         `... the red circle [SEG], the green star [REJ].`: one target per slot, phrase =
                the words before it back to the previous target, minus the template's words;
                [REJ] marks it rejected (no mask).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from lira_jax.ilvc import strip_ilvc
from lira_jax.lira_tokens import GRES_ANSWER_FORMATS
from lira_jax.tokens import IMAGE_PLACEHOLDER

_TEMPLATE_WORDS = re.compile(
    '|'.join(sorted({re.escape(w) for start, part, _ in GRES_ANSWER_FORMATS
                     for w in (start, *part.replace('[SEG]', '').split('{}')) if w.strip()},
                    key=len, reverse=True)))


@dataclasses.dataclass(frozen=True)
class Target:
  phrase: str
  slot: int  # the [SEG]/[REJ] slot whose mask is this target's
  rejected: bool


def _clean_gsva_phrase(text: str) -> str:
  text = _TEMPLATE_WORDS.sub(' ', text)
  return ' '.join(text.replace(',', ' ').replace(':', ' ').split()).strip(' .')


def read_answer(tokenizer, tokens: Sequence[int], t: Mapping[str, int]) -> tuple[str, list[Target]]:
  """(text, targets) of generated ids `tokens` (up to and without the stop token); t: cfg.tokens.
  The text is the decoded answer with `[SEG]<image_id>` dropped (the released GCG output)."""
  tokens = [int(x) for x in tokens]
  slot_tokens = (t['seg'], t['rej'])
  targets, slot, k = [], 0, 0
  text_since = []  # ids since the previous target (GSVA phrases)
  open_pair = None  # index into targets of an ILVC pair awaiting its second [SEG]
  while k < len(tokens):
    tok = tokens[k]
    if tok in slot_tokens:
      nxt = tokens[k + 1] if k + 1 < len(tokens) else None
      if open_pair is not None:
        open_pair = None  # the pair's second [SEG]: its mask is not an output
      elif tok == t['seg'] and nxt == t['image_id']:
        phrase = _between(tokenizer, tokens[k + 1:], t['p_start'], t['p_end'])
        targets.append(Target(phrase, slot, False))
        open_pair = len(targets) - 1
      else:
        phrase = _clean_gsva_phrase(tokenizer.decode(text_since, skip_special=True))
        targets.append(Target(phrase, slot, tok == t['rej']))
      slot += 1
      text_since = []
    else:
      text_since.append(tok)
    k += 1
  text = tokenizer.decode(tokens, skip_special=False)
  text = text.replace(_piece(tokenizer, t['seg']) + _piece(tokenizer, t['image_id']), '')
  return text.strip(), targets


def _piece(tokenizer, token_id: int) -> str:
  return tokenizer.decode([token_id], skip_special=False)


def _between(tokenizer, tokens: Sequence[int], start: int, end: int) -> str:
  """The decoded text between the first `start` and the next `end` ('' if absent)."""
  if start not in tokens:
    return ''
  rest = list(tokens[tokens.index(start) + 1:])
  rest = rest[:rest.index(end)] if end in rest else rest
  return tokenizer.decode(rest, skip_special=True).strip()


def history_answer(tokenizer, tokens: Sequence[int], t: Mapping[str, int]) -> str:
  """A generated answer as an earlier chat turn: its local images cannot be re-fed from text,
  so ILVC phrases take their non-ILVC form (lira_jax.ilvc.strip_ilvc)."""
  text = tokenizer.decode([int(x) for x in tokens], skip_special=False)
  image_id = _piece(tokenizer, t['image_id'])
  return strip_ilvc(text.replace(image_id, image_id + IMAGE_PLACEHOLDER))
