"""A word-level tokenizer for the synthetic referring world, built deterministically (no files).

It offers the interface of lira_jax.tokens.Tokenizer that the data code uses (encode, decode,
token_id, bos_id, eos_id, special_tokens, vocab_size, stop_ids), so `encode_conversation` and
`lira_tokens.token_config` work on it unchanged.

Pieces are maximal word runs (`\\w+`), single whitespace characters and single punctuation
characters. A single space between two words is implied rather than stored (decode puts it back
between consecutive word ids), which halves the length of the world's sentences; every other
space is a token of its own. Since two word pieces are never adjacent in text, encode/decode is
an exact round trip for any text over the vocabulary. Special tokens are cut out first (longest
match), as the SentencePiece tokenizer does.

Ids: the chat and LIRA special tokens take the ids of the given token table (cfg.tokens; tiny:
<s> 1, </s> 2, <|im_end|> 189, <|im_start|> 190, LIRA tokens 200..206), <unk> is 0, the InternVL
image tokens follow <|im_start|> as in InternVL2 (<img>, </img>, <IMG_CONTEXT>), and the pieces
(whitespace, punctuation, then the sorted words) fill the free ids from 3 upwards.
"""
from __future__ import annotations

import re
import string
from typing import Iterable, Mapping, Sequence

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from configs.lira_common import TINY_TOKENS
from lira_jax.lira_tokens import TOKEN_CONFIG_NAMES
from lira_jax.tokens import IMG_CONTEXT, IMG_END, IMG_START, ChatTemplate, get_template

_PIECE = re.compile(r'\w+|\s|[^\w\s]')
_WORD = re.compile(r'\w+')
WHITESPACE = (' ', '\n')
PUNCTUATION = tuple(string.punctuation)


def _is_word(piece: str) -> bool:
  return _WORD.fullmatch(piece) is not None


class WordTokenizer:
  """Word-level vocabulary + special-token table; see the module docstring."""

  def __init__(self, pieces: Sequence[str], special_tokens: Mapping[str, int], *,
               bos_token: str = '<s>', eos_token: str = '</s>'):
    self._special = dict(special_tokens)
    self._special_by_id = {i: t for t, i in self._special.items()}
    if len(self._special_by_id) != len(self._special):
      raise ValueError('two special tokens share an id')
    self._piece_by_id: dict[int, str] = {}
    next_id = 0
    for piece in pieces:
      while next_id in self._special_by_id:
        next_id += 1
      self._piece_by_id[next_id] = piece
      next_id += 1
    self._piece_id = {p: i for i, p in self._piece_by_id.items()}
    by_length = sorted(self._special, key=len, reverse=True)
    self._pattern = re.compile('|'.join(map(re.escape, by_length)))
    self.bos_id = self._special[bos_token]
    self.eos_id = self._special[eos_token]

  @property
  def special_tokens(self) -> dict[str, int]:
    return dict(self._special)

  @property
  def vocab_size(self) -> int:
    return max(max(self._special_by_id), max(self._piece_by_id)) + 1

  def token_id(self, token: str) -> int:
    if token in self._special:
      return self._special[token]
    if token in self._piece_id:
      return self._piece_id[token]
    raise KeyError(f'{token!r} is not a token of this vocabulary')

  def stop_ids(self, template: str | ChatTemplate) -> list[int]:
    return [self._special[t] for t in get_template(template).stop_tokens if t in self._special]

  def _encode_chunk(self, text: str) -> list[int]:
    pieces = _PIECE.findall(text)
    ids = []
    for k, piece in enumerate(pieces):
      if (piece == ' ' and 0 < k < len(pieces) - 1 and _is_word(pieces[k - 1])
          and _is_word(pieces[k + 1])):
        continue
      if piece not in self._piece_id:
        raise KeyError(f'{piece!r} (in {text!r}) is not in the synthetic vocabulary')
      ids.append(self._piece_id[piece])
    return ids

  def encode(self, text: str, add_bos: bool = True) -> list[int]:
    ids = [self.bos_id] if add_bos else []
    start = 0
    for m in self._pattern.finditer(text):
      ids += self._encode_chunk(text[start:m.start()])
      ids.append(self._special[m.group()])
      start = m.end()
    return ids + self._encode_chunk(text[start:])

  def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
    out, previous_word = [], False
    for i in map(int, ids):
      if i in self._special_by_id:
        if not skip_special:
          out.append(self._special_by_id[i])
        previous_word = False
      elif i in self._piece_by_id:
        piece = self._piece_by_id[i]
        word = _is_word(piece)
        out.append(' ' + piece if word and previous_word else piece)
        previous_word = word
      else:
        raise ValueError(f'id {i} is outside the vocabulary')
    return ''.join(out)


def world_tokenizer(texts: Iterable[str], tokens: Mapping[str, int] = TINY_TOKENS
                    ) -> WordTokenizer:
  """The tokenizer whose words are those of `texts` (e.g. synthetic.vocabulary_texts()) and
  whose special ids are `tokens` (a cfg.tokens table)."""
  special = {TOKEN_CONFIG_NAMES[k]: i for k, i in tokens.items() if k in TOKEN_CONFIG_NAMES}
  special.update({'<unk>': 0, '<s>': tokens['bos'], '</s>': tokens['eos']})
  special.update({t: tokens['im_start'] + 1 + k for k, t in
                  enumerate((IMG_START, IMG_END, IMG_CONTEXT))})
  words = sorted({w for text in texts for w in _WORD.findall(text)})
  return WordTokenizer([*WHITESPACE, *PUNCTUATION, *words], special)
