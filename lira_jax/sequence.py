"""The multimodal LLM input: xtuner-style tokenisation on the host, static-shape splicing under jit.

Host side (`encode_conversation`) reproduces xtuner's `template_map_fn` + `encode_fn` as LIRA
uses them: each turn's input is INSTRUCTION(user) (the system turn prepended on the first turn),
its output is the answer + the template separator (`<|im_end|>`, supervised, it is the EOS).
Every piece is split on `<image>`, the chunks are tokenised separately without BOS and joined by
the sentinel IMAGE_TOKEN_INDEX. BOS starts the sequence once. Labels are IGNORE_INDEX for BOS and
instructions and copy the output ids (sentinels included; they vanish when spliced).

Device side (`plan_sequence` + `gather_sequence`): the reference replaces, per sample and in order
of appearance, the first sentinel by the main image's visual tokens and the k-th later one by the
256 tokens of local (ILVC) image k, then packs the real tokens densely from position 0 and pads on
the right. Here the same layout is produced in a fixed buffer of max_len slots: every source token
([text | main visual | region tokens]) gets its destination = number of valid tokens before it in
sequence order (cumulative sums over the validity masks), and one gather builds the embeddings.
Validity of visual tokens may be anywhere in their buffer (SEFE's valid queries are only known on
device), so the plan is computed inside jit too. Tokens past max_len are dropped; `length` reports
the untruncated size so callers can detect it.

[SEG] bookkeeping: positions whose label is [SEG] (the input token is [SEG]) or [REJ], in sequence
order, in a buffer of max_seg slots. A [SEG] "closes" its target when an <image_id> lies between it
and the previous [SEG]/[REJ] (ILVC: `[SEG]<image_id><image> <p> x </p> [SEG]` — both [SEG]s map to
one target, the reference's repeat_interleave(2)); every other [SEG]/[REJ] opens a new target.
"""
from __future__ import annotations

import functools
from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax.nn.attention import positions_from_valid
from lira_jax.tokens import IMAGE_PLACEHOLDER, ChatTemplate, Tokenizer, get_template

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100


def _encode_with_images(tokenizer: Tokenizer, text: str) -> list[int]:
  ids = []
  for k, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
    if k:
      ids.append(IMAGE_TOKEN_INDEX)
    ids += tokenizer.encode(chunk, add_bos=False)
  return ids


def encode_conversation(tokenizer: Tokenizer, template: str | ChatTemplate,
                        turns: Sequence[tuple[str, str]], *, system_message: str | None = None,
                        max_length: int | None = None) -> tuple[list[int], list[int]]:
  """Training ids and labels of [(user, answer), ...]; `<image>` becomes IMAGE_TOKEN_INDEX.

  system_message None uses the template's (the released setting); '' drops the system turn.
  max_length truncates both lists (a sentinel counts as one token), as xtuner does.
  """
  t = get_template(template)
  sys_msg = t.system_message if system_message is None else system_message
  ids, labels = [tokenizer.bos_id], [IGNORE_INDEX]
  for k, (user, answer) in enumerate(turns):
    prompt = t.roles[0] + user + t.sep + t.roles[1]
    if k == 0 and sys_msg:
      prompt = t.system_template.format(system_message=sys_msg) + t.sep + prompt
    prompt_ids = _encode_with_images(tokenizer, prompt)
    answer_ids = _encode_with_images(tokenizer, answer + t.sep)
    ids += prompt_ids + answer_ids
    labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
  if max_length is not None:
    ids, labels = ids[:max_length], labels[:max_length]
  return ids, labels


def encode_prompt(tokenizer: Tokenizer, template: str | ChatTemplate,
                  turns: Sequence[tuple[str, str | None]], *, system_message: str | None = None
                  ) -> list[int]:
  """Generation prompt ids: the training layout of `turns` with the last answer left open (the
  ids end with the assistant role); earlier turns keep their answers."""
  *done, (user, _) = turns
  ids, _ = encode_conversation(tokenizer, template, [*done, (user, '')],
                               system_message=system_message)
  sep_ids = _encode_with_images(tokenizer, get_template(template).sep)
  return ids[:len(ids) - len(sep_ids)]  # an empty answer encodes as `sep` alone


def pad_batch(samples: Sequence[tuple[Sequence[int], Sequence[int]]], max_text_len: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """[(ids, labels), ...] -> ids i32[B, Lt] (pad 0), labels i32[B, Lt] (pad IGNORE_INDEX),
  valid bool[B, Lt] (true on the first len(ids) slots)."""
  b = len(samples)
  ids = np.zeros((b, max_text_len), np.int32)
  labels = np.full((b, max_text_len), IGNORE_INDEX, np.int32)
  valid = np.zeros((b, max_text_len), bool)
  for i, (s_ids, s_labels) in enumerate(samples):
    n = len(s_ids)
    if n > max_text_len or len(s_labels) != n:
      raise ValueError(f'sample {i}: {n} ids / {len(s_labels)} labels vs max_text_len '
                       f'{max_text_len}')
    ids[i, :n], labels[i, :n], valid[i, :n] = s_ids, s_labels, True
  return ids, labels, valid


class SequencePlan(NamedTuple):
  """Static-shape layout of a packed batch (B samples, L = max_len, M = max_seg).

  src i32[B, L]: index into the source table [text (Lt) | main visual (V) | regions (R*N)] of the
    token at each slot; Lt + V + R*N (one past the table) on padding.
  valid bool[B, L]: real tokens, a prefix of each row. positions i32[B, L]: cumsum(valid) - 1
    (what the LLM derives from `valid` itself). labels i32[B, L]: text labels, IGNORE_INDEX on
    visual and padding slots.
  seg_index i32[B, M]: slots of [SEG]/[REJ] label tokens in sequence order; seg_valid bool[B, M];
    seg_is_rej bool[B, M]; seg_target i32[B, M]: target (mask) index of each, 0-based per sample.
  length i32[B]: tokens the sample needs (> L means truncated). num_seg i32[B]: [SEG]/[REJ] label
    tokens in the text (> sum(seg_valid) means some were dropped).
  """
  src: jax.Array
  valid: jax.Array
  positions: jax.Array
  labels: jax.Array
  seg_index: jax.Array
  seg_valid: jax.Array
  seg_is_rej: jax.Array
  seg_target: jax.Array
  length: jax.Array
  num_seg: jax.Array


def first_slot_per_target(plan: SequencePlan, num_targets: int) -> tuple[jax.Array, jax.Array]:
  """The first [SEG]/[REJ] slot of each target k < K (the pre-ILVC one, whose mask is LIRA's
  output): (slot index into M i32[B, K], target has a slot bool[B, K])."""
  m = plan.seg_target.shape[1]
  hit = (plan.seg_target[:, None, :] == jnp.arange(num_targets)[None, :, None]) & (
      plan.seg_valid[:, None, :])  # [B, K, M]
  first = jnp.argmax(hit, axis=-1)
  return jnp.minimum(first, m - 1), hit.any(-1)


def _scatter(size: int, slot: jax.Array, values: jax.Array, fill) -> jax.Array:
  """out[slot[i]] = values[i] for in-range slots (slots >= size are dropped)."""
  out = jnp.full((size,), fill, values.dtype)
  return out.at[slot].set(values, mode='drop')


def _plan_one(ids, labels, text_valid, vis_valid, reg_valid, *, region_tokens, max_len, max_seg,
              seg_id, rej_id, image_id):
  """One sample: ids/labels/text_valid [Lt], vis_valid [V], reg_valid [R] -> SequencePlan row."""
  lt, v, r = ids.shape[0], vis_valid.shape[0], reg_valid.shape[0]
  n = region_tokens
  size = lt + v + r * n

  # Image blocks: block 0 is the main image, block j >= 1 is region slot j - 1; a sentinel beyond
  # the last slot (or of an invalid slot) contributes nothing.
  is_img = text_valid & (ids == IMAGE_TOKEN_INDEX)
  block = jnp.where(is_img, jnp.cumsum(is_img) - 1, r + 1)
  block_len = jnp.concatenate([jnp.sum(vis_valid, keepdims=True), reg_valid * n]).astype(jnp.int32)
  text_keep = text_valid & ~is_img
  count = jnp.where(is_img, jnp.take(block_len, block, mode='fill', fill_value=0),
                    text_keep.astype(jnp.int32))
  start = jnp.cumsum(count) - count
  block_start = _scatter(r + 1, block, start, -1)
  present = block_start >= 0

  vis_rank = jnp.cumsum(vis_valid) - vis_valid
  vis_dest = jnp.where(vis_valid & present[0], block_start[0] + vis_rank, max_len)
  reg_dest = jnp.where((reg_valid & present[1:])[:, None],
                       block_start[1:, None] + jnp.arange(n)[None], max_len).reshape(r * n)
  text_dest = jnp.where(text_keep, start, max_len)
  dest = jnp.concatenate([text_dest, vis_dest, reg_dest])
  src = _scatter(max_len, dest, jnp.arange(size, dtype=jnp.int32), size)
  valid = src < size

  # Text-side tables, read through src (non-text sources hit the padding entries).
  lab = jnp.where(text_keep, labels, IGNORE_INDEX)
  is_seg, is_rej = lab == seg_id, lab == rej_id
  obj = is_seg | is_rej
  before = jnp.cumsum(obj) - obj
  gap_has_image_id = _scatter(lt + 1, jnp.where(lab == image_id, before, lt + 1),
                              jnp.ones((lt,), bool), False)
  closing = is_seg & (before >= 1) & gap_has_image_id[before]
  target = jnp.cumsum(obj & ~closing) - 1

  def through_src(table, fill):
    padded = jnp.concatenate([table, jnp.full((size - lt + 1,), fill, table.dtype)])
    return padded[src]

  out_labels = through_src(lab, IGNORE_INDEX)
  out_obj = through_src(obj, False)
  seg_slot = jnp.where(out_obj, jnp.cumsum(out_obj) - 1, max_seg)
  return SequencePlan(
      src=src, valid=valid, positions=positions_from_valid(valid), labels=out_labels,
      seg_index=_scatter(max_seg, seg_slot, jnp.arange(max_len, dtype=jnp.int32), 0),
      seg_valid=_scatter(max_seg, seg_slot, out_obj, False),
      seg_is_rej=_scatter(max_seg, seg_slot, through_src(is_rej, False), False),
      seg_target=_scatter(max_seg, seg_slot, through_src(target, 0), 0),
      length=jnp.sum(count), num_seg=jnp.sum(obj))


def plan_sequence(ids: jax.Array, labels: jax.Array, text_valid: jax.Array, vis_valid: jax.Array,
                  reg_valid: jax.Array, *, region_tokens: int, max_len: int, max_seg: int,
                  tokens: Mapping[str, int]) -> SequencePlan:
  """Jittable layout of a batch. ids/labels i32[B, Lt] with IMAGE_TOKEN_INDEX sentinels,
  text_valid bool[B, Lt], vis_valid bool[B, V] (main visual block), reg_valid bool[B, R] (ILVC
  slots; slot r fills the (r + 2)-th sentinel, i.e. the r-th local image), region_tokens = N
  tokens per region (256). tokens: cfg.tokens (uses 'seg', 'rej', 'image_id')."""
  fn = functools.partial(_plan_one, region_tokens=region_tokens, max_len=max_len,
                         max_seg=max_seg, seg_id=tokens['seg'], rej_id=tokens['rej'],
                         image_id=tokens['image_id'])
  return jax.vmap(fn)(jnp.asarray(ids, jnp.int32), jnp.asarray(labels, jnp.int32),
                      jnp.asarray(text_valid, bool), jnp.asarray(vis_valid, bool),
                      jnp.asarray(reg_valid, bool))


def text_embed_ids(ids: jax.Array) -> jax.Array:
  """ids with sentinels (and any negative id) replaced by 0, safe to embed; those rows are never
  gathered into the sequence."""
  return jnp.where(ids < 0, 0, ids)


def gather_sequence(plan: SequencePlan, text_embeds: jax.Array, vis: jax.Array, reg: jax.Array
                    ) -> jax.Array:
  """One gather: text_embeds f32[B, Lt, H], vis f32[B, V, H], reg f32[B, R, N, H] ->
  embeds f32[B, L, H] (zeros on padding), in text_embeds' dtype."""
  b, _, h = text_embeds.shape
  dtype = text_embeds.dtype
  table = jnp.concatenate([text_embeds, vis.astype(dtype), reg.reshape(b, -1, h).astype(dtype),
                           jnp.zeros((b, 1, h), dtype)], axis=1)
  return jax.vmap(lambda t, i: t[i])(table, plan.src)


def pack_sequence(text_embeds: jax.Array, vis: jax.Array, vis_valid: jax.Array, reg: jax.Array,
                  reg_valid: jax.Array, ids: jax.Array, labels: jax.Array, text_valid: jax.Array,
                  *, max_len: int, max_seg: int, tokens: Mapping[str, int]
                  ) -> tuple[jax.Array, SequencePlan]:
  """plan_sequence + gather_sequence: (embeds f32[B, max_len, H], plan). text_embeds are the
  LLM embeddings of text_embed_ids(ids); N = reg.shape[2]."""
  plan = plan_sequence(ids, labels, text_valid, vis_valid, reg_valid, region_tokens=reg.shape[2],
                       max_len=max_len, max_seg=max_seg, tokens=tokens)
  return gather_sequence(plan, text_embeds, vis, reg), plan
