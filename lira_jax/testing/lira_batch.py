"""Tiny, hand-built LIRA batches for tests and smoke runs (no tokenizer needed): one referring
sample with the released ILVC answer and one GSVA sample with a present and an absent target."""
from __future__ import annotations

import numpy as np

from lira_jax.sequence import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def _sample(t, prompt_words, answer):
  """ids/labels of BOS + prompt (unsupervised, with the image sentinel) + answer (supervised)."""
  ids = [t['bos'], t['im_start'], *prompt_words[:3], IMAGE_TOKEN_INDEX, *prompt_words[3:],
         t['im_end'], t['im_start']]
  labels = [IGNORE_INDEX] * len(ids) + list(answer)
  return ids + list(answer), labels


def referring_answer(t, words):
  """`[SEG]<image_id><image> <p> words </p> [SEG].` + <|im_end|> (two [SEG]s, one target)."""
  return [t['seg'], t['image_id'], IMAGE_TOKEN_INDEX, t['p_start'], *words, t['p_end'], t['seg'],
          7, t['im_end']]


def gres_answer(t, present_words, absent_words):
  """A GSVA-style answer with one present target ([SEG]) and one absent target ([REJ])."""
  return [t['p_start'], *present_words, t['p_end'], t['seg'], 8, t['p_start'], *absent_words,
          t['p_end'], t['rej'], 7, t['im_end']]


def make_batch(cfg, rng: np.random.Generator, *, text_len=48, num_tiles=(2, 3),
               num_regions=(1, 0), answers=('referring', 'gres')):
  """A numpy batch matching LIRA.__call__ plus gt_masks; sample i uses answers[i]."""
  t = dict(cfg.tokens)
  m = cfg.model
  b = len(answers)
  s_omg, s_tile = m.omg.image_size, m.vision.image_size
  max_tiles, max_regions = cfg.seq.max_tiles, cfg.seq.max_regions
  ids = np.zeros((b, text_len), np.int32)
  labels = np.full((b, text_len), IGNORE_INDEX, np.int32)
  valid = np.zeros((b, text_len), bool)
  for i, kind in enumerate(answers):
    words = rng.integers(3, 150, size=8).tolist()
    answer = (referring_answer(t, words[:2]) if kind == 'referring' else
              gres_answer(t, words[:2], words[2:4]))
    s_ids, s_labels = _sample(t, words[2:], answer)
    n = len(s_ids)
    ids[i, :n], labels[i, :n], valid[i, :n] = s_ids, s_labels, True
  masks = np.zeros((b, 2, s_omg, s_omg), np.float32)
  masks[:, 0, s_omg // 4: s_omg // 2, s_omg // 8: s_omg // 2] = 1.0
  masks[:, 1, s_omg // 2:, s_omg // 2:] = 1.0
  return dict(
      pixels=rng.normal(size=(b, s_omg, s_omg, 3)).astype(np.float32),
      tiles=rng.normal(size=(b, max_tiles, s_tile, s_tile, 3)).astype(np.float32),
      tile_valid=np.arange(max_tiles)[None] < np.asarray(num_tiles)[:, None],
      regions=rng.normal(size=(b, max_regions, s_tile, s_tile, 3)).astype(np.float32),
      region_valid=np.arange(max_regions)[None] < np.asarray(num_regions)[:, None],
      ids=ids, labels=labels, text_valid=valid, gt_masks=masks)
