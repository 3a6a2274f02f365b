"""Chat templates, image placeholders and the SentencePiece tokenizer of InternVL2 / LIRA.

Templates are data: `build_prompt` assembles them in InternVL's "MPT" separator style, which LIRA's
xtuner `internvl2_chat` template reproduces string for string (system turn, then
`role + message + sep` per filled turn, a bare role for the open assistant turn, no newline after
the separator).

`Tokenizer` needs only the `sentencepiece` package: special tokens are cut out of the text first
(longest match wins), each remaining chunk goes through SentencePiece, and the special tokens map
to their ids by table lookup. This is what the original slow InternLM2 tokenizer does through
transformers' added-token trie.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Mapping, Sequence

import sentencepiece as spm

import lira_jax  # noqa: F401  (project convention: imported first everywhere)

IMAGE_PLACEHOLDER = '<image>'
IMG_START, IMG_END, IMG_CONTEXT = '<img>', '</img>', '<IMG_CONTEXT>'

INTERNVL2_SYSTEM_MESSAGE = ('你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, '
                            '是一个有用无害的人工智能助手。')


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """One conversation template. `system_template` holds a `{system_message}` field; `sep` closes
  every filled turn and is the primary stop token; `stop_tokens` are all tokens that end
  generation (the original lists them as ids of the tokenizer it was written for)."""
  name: str
  system_template: str
  system_message: str
  roles: tuple[str, str]
  sep: str
  stop_tokens: tuple[str, ...]


TEMPLATES: dict[str, ChatTemplate] = {
    # InternLM2-based InternVL2 (2B, 8B) and LIRA. Stop ids 2, 92543, 92542 of the original.
    'internlm2-chat': ChatTemplate(
        name='internlm2-chat', system_template='<|im_start|>system\n{system_message}',
        system_message=INTERNVL2_SYSTEM_MESSAGE,
        roles=('<|im_start|>user\n', '<|im_start|>assistant\n'), sep='<|im_end|>',
        stop_tokens=('<|im_end|>', '<|im_start|>', '</s>')),
    # Qwen2-based InternVL2 (1B). The original's stop ids 2, 6, 7, 8 belong to another vocabulary;
    # by name they are these (its fourth, <|im_sep|>, does not exist in Qwen2).
    'Hermes-2': ChatTemplate(
        name='Hermes-2', system_template='<|im_start|>system\n{system_message}',
        system_message=INTERNVL2_SYSTEM_MESSAGE,
        roles=('<|im_start|>user\n', '<|im_start|>assistant\n'), sep='<|im_end|>',
        stop_tokens=('<|im_end|>', '<|im_start|>', '<|endoftext|>')),
}


def get_template(template: str | ChatTemplate) -> ChatTemplate:
  if isinstance(template, ChatTemplate):
    return template
  if template not in TEMPLATES:
    raise KeyError(f'unknown chat template {template!r}; known: {sorted(TEMPLATES)}')
  return TEMPLATES[template]


def build_prompt(template: str | ChatTemplate, turns: Sequence[tuple[str, str | None]],
                 system_message: str | None = None) -> str:
  """The prompt string for `turns` = [(user, assistant), ...] (no BOS; the tokenizer adds it).

  An assistant message of None (or '') leaves that turn open, so [(q, None)] ends with the
  assistant role, ready for generation; completed turns end with `sep` (the training layout).
  An empty message renders as the bare role, exactly as in the original.
  """
  t = get_template(template)
  sys_msg = t.system_message if system_message is None else system_message
  out = [t.system_template.format(system_message=sys_msg), t.sep]
  for user, assistant in turns:
    for role, message in zip(t.roles, (user, assistant)):
      out.append(role + message + t.sep if message else role)
  return ''.join(out)


def expand_image_placeholders(prompt: str, num_tiles_per_image: Sequence[int],
                              num_image_token: int = 256) -> str:
  """Replaces the k-th `<image>` by `<img>` + `<IMG_CONTEXT>` x (num_image_token * tiles_k) +
  `</img>`: one wrapper per image covering all its tiles (thumbnail included)."""
  parts = prompt.split(IMAGE_PLACEHOLDER)
  if len(parts) - 1 != len(num_tiles_per_image):
    raise ValueError(f'prompt has {len(parts) - 1} {IMAGE_PLACEHOLDER} placeholders but '
                     f'{len(num_tiles_per_image)} images were given')
  out = [parts[0]]
  for tiles, text in zip(num_tiles_per_image, parts[1:]):
    out += [IMG_START, IMG_CONTEXT * (num_image_token * tiles), IMG_END, text]
  return ''.join(out)


def _token_content(entry) -> str | None:
  """tokenizer_config.json writes a token either as a string or as {"content": ...}."""
  return entry.get('content') if isinstance(entry, dict) else entry


class Tokenizer:
  """SentencePiece model + a table of special tokens (string -> id) split out before encoding.

  The table holds the added tokens and SentencePiece's own unk/bos/eos pieces (those are control
  symbols SentencePiece never produces from text, but transformers matches them literally); it is
  never empty, as every SentencePiece model has an unk piece.
  Added tokens may reuse ids inside the SentencePiece range: InternLM2 renames its reserved
  pieces (e.g. 92542 -> <|im_end|>) this way.
  """

  def __init__(self, model_file: str | os.PathLike, *,
               special_tokens: Mapping[str, int] | None = None, bos_token: str | None = None,
               eos_token: str | None = None):
    if not os.path.isfile(model_file):
      raise FileNotFoundError(
          f'SentencePiece model {model_file} not found. This tokenizer reads an InternLM2-style '
          'tokenizer.model; Qwen2 checkpoints ship a byte-level BPE (vocab.json + merges.txt) '
          'instead, which it does not support.')
    self.sp = spm.SentencePieceProcessor(model_file=os.fspath(model_file))
    self._special: dict[str, int] = {}
    self._special_by_id: dict[int, str] = {}
    self.add_special_tokens({self.sp.id_to_piece(i): i
                             for i in (self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
                             if i >= 0})
    self.add_special_tokens(special_tokens or {})
    self.bos_id = self.token_id(bos_token) if bos_token else self.sp.bos_id()
    self.eos_id = self.token_id(eos_token) if eos_token else self.sp.eos_id()

  @classmethod
  def from_dir(cls, path: str | os.PathLike) -> 'Tokenizer':
    """Loads tokenizer.model plus the added tokens of tokenizer_config.json
    (`added_tokens_decoder`, and `bos_token` / `eos_token`) and of added_tokens.json."""
    model_file = os.path.join(path, 'tokenizer.model')
    config_file = os.path.join(path, 'tokenizer_config.json')
    added_file = os.path.join(path, 'added_tokens.json')
    config = {}
    if os.path.isfile(config_file):
      with open(config_file, encoding='utf-8') as f:
        config = json.load(f)
    added = {_token_content(e): int(i) for i, e in config.get('added_tokens_decoder', {}).items()}
    if os.path.isfile(added_file):
      with open(added_file, encoding='utf-8') as f:
        for token, i in json.load(f).items():
          if added.setdefault(token, int(i)) != int(i):
            raise ValueError(f'{token!r} has id {added[token]} in {config_file} but {i} in '
                             f'{added_file}')
    return cls(model_file, special_tokens=added, bos_token=_token_content(config.get('bos_token')),
               eos_token=_token_content(config.get('eos_token')))

  def add_special_tokens(self, tokens: Mapping[str, int]) -> None:
    """Registers string -> id pairs; re-adding an identical pair is a no-op, a clash raises."""
    special, by_id = dict(self._special), dict(self._special_by_id)
    for token, i in tokens.items():
      if not token:
        raise ValueError('empty special token')
      if special.get(token, i) != i:
        raise ValueError(f'{token!r} already has id {special[token]}, not {i}')
      if by_id.get(i, token) != token:
        raise ValueError(f'id {i} already belongs to {by_id[i]!r}, not {token!r}')
      special[token], by_id[i] = i, token
    self._special, self._special_by_id = special, by_id
    by_length = sorted(self._special, key=len, reverse=True)
    # Alternation tries left to right, so longest-first gives the longest match at the leftmost
    # position, like transformers' trie.
    self._pattern = re.compile('|'.join(map(re.escape, by_length)))

  @property
  def special_tokens(self) -> dict[str, int]:
    return dict(self._special)

  @property
  def vocab_size(self) -> int:
    """Rows an embedding table needs: SentencePiece pieces and special ids, whichever is more."""
    return max(self.sp.get_piece_size(), max(self._special_by_id, default=-1) + 1)

  def token_id(self, token: str) -> int:
    """The id of one vocabulary entry (special token or SentencePiece piece); never tokenizes."""
    if token in self._special:
      return self._special[token]
    i = self.sp.piece_to_id(token)
    if self.sp.id_to_piece(i) != token:  # piece_to_id answers unk_id for unknown pieces
      raise KeyError(f'{token!r} is not a token of this vocabulary')
    return i

  def stop_ids(self, template: str | ChatTemplate) -> list[int]:
    """Ids of the template's stop tokens that exist in this vocabulary, `sep` first."""
    ids = []
    for token in get_template(template).stop_tokens:
      try:
        ids.append(self.token_id(token))
      except KeyError:  # e.g. '</s>' in a vocabulary without it
        pass
    return ids

  def encode(self, text: str, add_bos: bool = True) -> list[int]:
    """Ids of `text`: special tokens by lookup, the text between them by SentencePiece."""
    if add_bos and self.bos_id < 0:
      raise ValueError('this tokenizer has no BOS token; encode with add_bos=False')
    ids = [self.bos_id] if add_bos else []
    start = 0
    for m in self._pattern.finditer(text):
      if m.start() > start:
        ids += self.sp.encode(text[start:m.start()])
      ids.append(self._special[m.group()])
      start = m.end()
    if start < len(text):
      ids += self.sp.encode(text[start:])
    return ids

  def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
    """Special ids render as their strings (or vanish with skip_special); runs of other ids are
    decoded by SentencePiece one run at a time, mirroring the chunking of `encode`."""
    out, run = [], []
    for i in map(int, ids):
      if i in self._special_by_id:
        out.append(self.sp.decode(run))
        run = []
        if not skip_special:
          out.append(self._special_by_id[i])
      elif 0 <= i < self.sp.get_piece_size():
        run.append(i)
      else:
        raise ValueError(f'id {i} is outside the vocabulary')
    out.append(self.sp.decode(run))
    return ''.join(out)
