"""Batched generation on the host side: prompt elements from images and questions, fixed-shape
batches, one compiled program per batch size (lira_generate), answers read back.

Everything that varies per sample (prompt length, image size, ILVC on/off) is data: a batch of
any mix reuses the same program. Images sit top-left in a square canvas whose side is the image's
longer side rounded up to CANVAS_STEP, so a run over images of similar size compiles once.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from PIL import Image

from lira_jax.data import encode
from lira_jax.infer import answer as answer_lib
from lira_jax.infer.generate import Sampling
from lira_jax.infer.lira_generate import GenerateOptions, make_generate_fn
from lira_jax.sequence import IGNORE_INDEX, encode_prompt
from lira_jax.train import metrics as metrics_lib

CANVAS_STEP = 128


@dataclasses.dataclass
class Result:
  """One answer: text, grounded targets (phrase, slot, rejected), masks bool[K, h, w] of the
  targets (all False for a rejected one), the [SEG]/[REJ] logits f32[K, V] of each target's
  slot, and the raw generated ids."""
  text: str
  targets: list[answer_lib.Target]
  masks: np.ndarray
  seg_logits: np.ndarray
  ids: list[int]


def load_image(path: str) -> Image.Image:
  """An RGB image, or a ValueError that names the file and what went wrong."""
  try:
    with Image.open(path) as f:
      return f.convert('RGB')
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read image {path!r}: {e}') from e


def _canvas(side: int) -> int:
  return CANVAS_STEP * math.ceil(side / CANVAS_STEP)


def prompt_element(image: Image.Image, turns: Sequence[tuple[str, str | None]], tokenizer, cfg,
                   *, ilvc: bool = True, system_message: str | None = None) -> dict:
  """Host arrays of one prompt: the image both ways, the prompt ids (the last turn open), the
  original image for ILVC crops and mask output."""
  ids = encode_prompt(tokenizer, cfg.template, turns, system_message=system_message)
  if len(ids) > cfg.seq.max_len:
    raise ValueError(f'the prompt has {len(ids)} tokens before the image tokens; the context '
                     f'holds {cfg.seq.max_len} (cfg.seq.max_len)')
  rgb = np.asarray(image.convert('RGB'), np.uint8)
  return dict(**encode.image_inputs(image, cfg), ids=np.asarray(ids, np.int32), image=rgb,
              ilvc=np.asarray(ilvc))


def collate(elements: list[dict], text_len: int) -> dict[str, np.ndarray]:
  """Stacks prompt elements; ids padded to text_len, images into one canvas."""
  side = _canvas(max(max(e['image'].shape[:2]) for e in elements))
  b = len(elements)
  ids = np.zeros((b, text_len), np.int32)
  valid = np.zeros((b, text_len), bool)
  image = np.zeros((b, side, side, 3), np.uint8)
  for i, e in enumerate(elements):
    n = len(e['ids'])
    ids[i, :n], valid[i, :n] = e['ids'], True
    h, w = e['image'].shape[:2]
    image[i, :h, :w] = e['image']
  stack = lambda k: np.stack([e[k] for e in elements])
  return dict(pixels=stack('pixels'), tiles=stack('tiles'), tile_valid=stack('tile_valid'),
              ids=ids, labels=np.full_like(ids, IGNORE_INDEX), text_valid=valid, image=image,
              image_hw=np.asarray([e['image'].shape[:2] for e in elements], np.int32),
              ilvc=stack('ilvc'))


def undecodable_ids(tokenizer, vocab_size: int) -> tuple[int, ...]:
  """Embedding rows the tokenizer cannot decode (vocabulary padding, gaps): never generated."""
  bad = []
  for i in range(vocab_size):
    try:
      tokenizer.decode([i])
    except ValueError:
      bad.append(i)
  return tuple(bad)


def generate_options(cfg, tokenizer, *, max_new_tokens: int, sampling: Sampling = Sampling()
                     ) -> GenerateOptions:
  return GenerateOptions(
      suppress_ids=undecodable_ids(tokenizer, int(cfg.model.llm.vocab_size)),
      max_new_tokens=max_new_tokens, max_seg=int(cfg.seq.max_seg),
      max_regions=int(cfg.seq.max_regions), sampling=sampling,
      stop_ids=tuple(tokenizer.stop_ids(cfg.template)),
      forced_after_region=tuple(tokenizer.encode(' <p>', add_bos=False)))


class Runner:
  """Generates answers for prompt elements in batches of `batch_size` (the last one padded).
  It keeps its own (decoding-layout) copy of the LLM weights: drop the caller's states."""

  def __init__(self, cfg, tokenizer, graphdef, states, *, batch_size: int,
               max_new_tokens: int = 64, sampling: Sampling = Sampling(), seed: int = 0,
               log=None):
    self.cfg, self.tokenizer, self.log = cfg, tokenizer, log
    model = nnx.merge(graphdef, *states)
    model.llm.unstack_layers()  # per-layer weights decode ~2x faster on CPU (see the method)
    graphdef, state = nnx.split(model)
    self.states = (state,)
    self.batch_size = batch_size
    self.fn = make_generate_fn(graphdef, generate_options(
        cfg, tokenizer, max_new_tokens=max_new_tokens, sampling=sampling))
    self.key = jax.random.key(seed)

  def run(self, elements: list[dict]) -> list[Result]:
    """Results in input order (a progress line per batch to self.log, when set)."""
    out = []
    progress = metrics_lib.Progress(len(elements))
    for start in range(0, len(elements), self.batch_size):
      chunk = elements[start:start + self.batch_size]
      batch = collate(chunk + [chunk[0]] * (self.batch_size - len(chunk)), self.cfg.seq.max_len)
      # Sampling draws from a key per batch index, so results do not depend on the batch size
      # only under greedy decoding (the evaluators' setting).
      key = jax.random.fold_in(self.key, start)
      got = jax.device_get(self.fn(self.states, batch, key))
      for i, e in enumerate(chunk):
        out.append(self._result(got, i, e))
      if self.log:
        self.log(progress.line(len(out)).replace('step', 'prompt', 1).replace('s/step', 's/prompt'))
    return out

  def _result(self, got: dict, i: int, element: dict) -> Result:
    if got['prompt_length'][i] > self.cfg.seq.max_len:
      raise ValueError(f'the prompt with its image tokens needs {got["prompt_length"][i]} '
                       f'tokens; the context holds {self.cfg.seq.max_len} (cfg.seq.max_len)')
    n = int(got['lengths'][i]) - int(got['finished'][i])  # drop the stop token
    ids = got['tokens'][i, :n].tolist()
    text, targets = answer_lib.read_answer(self.tokenizer, ids, self.cfg.tokens)
    h, w = element['image'].shape[:2]
    slots = [min(t.slot, got['masks'].shape[1] - 1) for t in targets]
    in_range = np.asarray([t.slot < got['masks'].shape[1] for t in targets], bool)
    masks = got['masks'][i, slots, :h, :w] & in_range[:, None, None] if targets else (
        np.zeros((0, h, w), bool))
    logits = got['seg_logits'][i, slots] if targets else np.zeros((0, got['seg_logits'].shape[-1]))
    return Result(text, targets, masks, logits, ids)
