"""LLaVA-format conversation data (LLaVA's llava_v1_5_mix665k.json, LIRA's stage-1 json, the
InternVL2 SFT jsonl files) as sources of plain (user, answer) turns.

Format: a JSON list (or JSON lines) of {id, image (a path relative to image_dir; absent for a
text-only conversation), conversations: [{from: 'human' | 'gpt', value}, ...]}.

Turns are built as LIRA's loader (xtuner's llava_map_fn) builds them: leading 'gpt' messages
(and any 'gpt' message with no user text before it) are dropped, consecutive 'human' messages
are concatenated into one user turn, a user turn ends at the next 'gpt' message (a trailing
unanswered user turn is dropped), and an `<image>` placeholder is moved to the front of the
message holding it as `<image>\\n{rest}` (rest stripped). A conversation with an image but no
placeholder gets `<image>\\n` in front of its first user turn (InternVL's rule: the image needs
a slot). A placeholder in a text-only conversation, several images, or an unknown role raises
ValueError.
"""
from __future__ import annotations

import json
import os

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax.data.readers.example import Example, with_image
from lira_jax.tokens import IMAGE_PLACEHOLDER


def conversation_turns(messages, has_image: bool) -> tuple[tuple[str, str], ...]:
  """(user, answer) turns of one LLaVA `conversations` list (see the module docstring)."""
  turns, user, seen = [], '', False
  for msg in messages:
    role, value = msg['from'], msg['value']
    if role == 'human':
      if IMAGE_PLACEHOLDER in value:
        seen = True
        value = with_image(value.replace(IMAGE_PLACEHOLDER, '').strip())
      user += value
    elif role == 'gpt':
      if user:
        turns.append((user, value))
      user = ''
    else:
      raise ValueError(f'unknown role {role!r}')
  if not turns:
    raise ValueError('no answered user turn')
  if seen and not has_image:
    raise ValueError(f'{IMAGE_PLACEHOLDER} in a conversation without an image')
  if has_image and not seen:
    turns[0] = (with_image(turns[0][0]), turns[0][1])
  return tuple(turns)


def load_records(path: str) -> list[dict]:
  with open(path) as f:
    if path.endswith('.jsonl'):
      return [json.loads(line) for line in f if line.strip()]
    return json.load(f)


class LLaVA:
  """Random-access source over one LLaVA-format json / jsonl file."""

  def __init__(self, json_path: str, image_dir: str, *, name: str = 'llava'):
    self.name, self.image_dir = name, image_dir
    self._records = load_records(json_path)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> Example:
    record = self._records[index]
    image = record.get('image')
    if image is not None and not isinstance(image, str):
      raise ValueError(f'record {index}: only one image per conversation is supported')
    turns = conversation_turns(record['conversations'], image is not None)
    path = os.path.join(self.image_dir, image) if image else ''
    return Example(self.name, str(record.get('id', index)), path, turns)
