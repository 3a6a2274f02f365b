"""LIRA generation in one compiled program: prefill the prompt (image + question), run the decode
loop of lira_jax.infer.generate with a hook, decode every [SEG] to a mask on the original image.

The hook, on every fed token of every sample:
- [SEG] / [REJ]: records the final-normed hidden state and the LM logits it produced in the next
  of M static slots (the [SEG] logits AttrEval probes), with the step it was generated at;
- ILVC (switch `ilvc`): `<image_id>` fed right after a [SEG] decodes that [SEG] to a mask, makes
  the highlighted region tile from the sample's original image (lira_jax.ilvc.region_pixels, the
  released "highlight" crop), encodes it with the semantic encoder and appends its N tokens to
  the sample's own region slot of the KV cache (a reserved tail of max_regions x N slots per
  sample, written at per-sample offsets; attention follows validity, so the tokens after see
  them). Other samples write nothing valid and are unaffected. Then the tokens of " <p>" are
  forced, as the released loop forces them. At most `max_regions` regions per sample (the
  cache's static reserve). With ILVC off (per sample at run time, batch['ilvc']; or not
  compiled, opts.ilvc), `<image_id>` stops the sample (the released RefCOCO evaluation's stop
  word): its first [SEG] is the answer.

Mask per slot: from the [SEG]'s own hidden state (LIRA's rule: for an ILVC pair the first
[SEG]'s mask is the output, the second is computed and ignored by callers).

Axis letters: B batch, Lt prompt text buffer, M [SEG]/[REJ] slots, D LLM hidden, V vocabulary,
N tokens per region tile, H/W original-image buffer, h/w mask-logit side.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lira_jax import ilvc
from lira_jax.infer.generate import Sampling, decode
from lira_jax.models.lira import LIRA
from lira_jax.models.omg_head import seg_masks_to_image


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
  """Static settings of one compiled generation program."""
  max_new_tokens: int = 64
  max_seg: int = 4  # [SEG]/[REJ] slots per sample (later ones are generated but not decoded)
  ilvc: bool = True  # compile the region path (batch['ilvc'] then switches it per sample)
  ilvc_off_stops: bool = True  # without ILVC, <image_id> ends the sample (released RefCOCO)
  max_regions: int = 2
  sampling: Sampling = Sampling()
  stop_ids: tuple[int, ...] = ()
  forced_after_region: tuple[int, ...] = ()  # ids of " <p>"
  suppress_ids: tuple[int, ...] = ()  # embedding rows that are no token


class SegSlots(NamedTuple):
  """The hook's carry."""
  hidden: jax.Array  # f32[B, M, D]
  logits: jax.Array  # f32[B, M, V]
  is_rej: jax.Array  # bool[B, M]
  step: jax.Array  # i32[B, M] index of the slot's token in the generated tokens
  count: jax.Array  # i32[B] slots used (may exceed M: the excess is dropped)
  regions: jax.Array  # i32[B] ILVC regions appended
  forced: jax.Array  # i32[B] forced tokens still to emit
  fed: jax.Array  # i32[] tokens fed so far (= the step of the current one)


def _empty_slots(b: int, m: int, d: int, v: int) -> SegSlots:
  zeros_i = jnp.zeros((b,), jnp.int32)
  return SegSlots(jnp.zeros((b, m, d), jnp.float32), jnp.zeros((b, m, v), jnp.float32),
                  jnp.zeros((b, m), bool), jnp.zeros((b, m), jnp.int32), zeros_i, zeros_i,
                  zeros_i, jnp.int32(0))


def _force(logits: jax.Array, forced: jax.Array, ids: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """Samples with forced > 0 get logits that admit only ids[len(ids) - forced]."""
  if not ids:
    return logits, forced
  table = jnp.asarray(ids, jnp.int32)
  target = table[jnp.clip(len(ids) - forced, 0, len(ids) - 1)]
  only = jnp.where(jnp.arange(logits.shape[-1]) == target[:, None], 0.0, -jnp.inf)
  return jnp.where((forced > 0)[:, None], only, logits), jnp.maximum(forced - 1, 0)


def generate(model: LIRA, batch: dict, key: jax.Array, opts: GenerateOptions) -> dict:
  """batch: pixels, tiles, tile_valid (LIRA.encode_images), prompt ids / labels / text_valid
  i32/bool[B, Lt] (labels unused), image u8[B, H, W, 3] original images top-left aligned,
  image_hw i32[B, 2] their sizes, optional ilvc bool[B] (per-sample ILVC switch, default on;
  off = stop at `<image_id>`).

  Returns tokens i32[B, N] (padding 0 after the stop), lengths i32[B], finished bool[B],
  seg_valid / seg_is_rej bool[B, M], seg_step i32[B, M], seg_logits f32[B, M, V],
  mask_logits f32[B, M, h, w] (stride 4; f32[B, M, S, S] at the pixel input's side when the
  model has a mask refiner) and masks bool[B, M, H, W] (False on [REJ] and unused slots),
  regions i32[B] (ILVC regions appended), prompt_length i32[B] (tokens the prompt needs; over
  the context, cfg.seq.max_len, it was cut)."""
  tokens = model.tokens
  seg_id, rej_id, image_id = tokens['seg'], tokens['rej'], tokens['image_id']
  omg, visual = model.encode_images(batch)
  class_map = model.class_map(omg, model.region_classes(omg, batch['pixels']))
  b = batch['ids'].shape[0]
  d = model.llm.cfg.hidden_size
  n = model.tokens_per_tile
  plan, embeds = model.embed_sequence(batch, visual, jnp.zeros((b, 0, n, d), jnp.float32),
                                      jnp.zeros((b, 0), bool))
  image, image_hw = batch['image'], batch['image_hw']
  out_hw = image.shape[1:3]
  tile_side = batch['tiles'].shape[2]
  ilvc_on = batch.get('ilvc', jnp.ones((b,), bool)) & opts.ilvc
  region_base = plan.valid.shape[1] + opts.max_new_tokens  # the cache's reserved tail

  def region_tokens(slots: SegSlots, trigger: jax.Array) -> jax.Array:
    """The ILVC tokens f32[B, N, D] of each sample's latest [SEG] mask."""
    last = jnp.maximum(slots.count - 1, 0)
    hidden = jnp.take_along_axis(slots.hidden, last[:, None, None], axis=1)
    logits = model.decode_seg(hidden, trigger[:, None], omg, class_map)[-1]
    logits = model.refine_seg_logits(logits, batch['pixels'], jnp.arange(b, dtype=jnp.int32))
    masks = seg_masks_to_image(logits, image_hw, trigger, out_hw)
    pixels = jax.vmap(lambda im, m, hw: ilvc.region_pixels(im, m, hw, tile_side))(
        image, masks, image_hw)
    return model.encode_tiles(ilvc.normalize_tile(pixels)[:, None])

  def hook(slots: SegSlots, fed, logits, hidden, active, cache):
    # The presence head's [REJ]/[SEG] offset, as in the forward pass (the prefill's logits, for
    # the answer's first token, go without it: no answer starts with [SEG] or [REJ]).
    logits = model.decision_logits(logits[:, None], hidden[:, None], class_map)[:, 0]
    is_slot = active & ((fed == seg_id) | (fed == rej_id))
    # A scatter into row (b, slot) only; samples that feed no slot token (and slots past M)
    # point out of range and are dropped, so a step never rewrites the whole [B, M, V] buffer.
    rows = jnp.arange(fed.shape[0])
    slot = jnp.where(is_slot, slots.count, opts.max_seg)
    put = lambda buf, x: buf.at[rows, slot].set(x.astype(buf.dtype), mode='drop')
    slots = slots._replace(
        hidden=put(slots.hidden, hidden), logits=put(slots.logits, logits),
        is_rej=put(slots.is_rej, fed == rej_id),
        step=put(slots.step, jnp.broadcast_to(slots.fed, fed.shape)),
        count=slots.count + is_slot, fed=slots.fed + 1)
    if opts.ilvc:
      last = jnp.maximum(slots.count - 1, 0)
      after_seg = (slots.count > 0) & ~jnp.take_along_axis(slots.is_rej, last[:, None], 1)[:, 0]
      trigger = (active & ilvc_on & (fed == image_id) & after_seg
                 & (slots.regions < opts.max_regions) & (slots.count <= opts.max_seg))

      def append(args):
        logits, cache = args
        new = region_tokens(slots, trigger)
        valid = jnp.broadcast_to(trigger[:, None], new.shape[:2])
        region_logits, _, cache = model.llm.extend(new.astype(embeds.dtype), valid, cache,
                                                   slots=region_base + slots.regions * n)
        return jnp.where(trigger[:, None], region_logits[:, -1], logits), cache

      logits, cache = jax.lax.cond(jnp.any(trigger), append, lambda args: args, (logits, cache))
      forced = jnp.where(trigger, len(opts.forced_after_region), slots.forced)
      logits, forced = _force(logits, forced, opts.forced_after_region)
      slots = slots._replace(regions=slots.regions + trigger, forced=forced)
    return slots, logits, cache

  vocab = model.llm.cfg.vocab_size
  out = decode(model.llm, embeds, plan.valid, max_new_tokens=opts.max_new_tokens,
               stop_ids=opts.stop_ids, sampling=opts.sampling, key=key,
               cache_extra=opts.max_regions * n if opts.ilvc else 0, hook=hook,
               extra=_empty_slots(b, opts.max_seg, d, vocab),
               sample_stop=jnp.where(ilvc_on | (not opts.ilvc_off_stops), -1, image_id),
               suppress_ids=opts.suppress_ids)
  slots = out.extra
  used = jnp.arange(opts.max_seg)[None] < slots.count[:, None]
  decoded = used & ~slots.is_rej
  mask_logits = model.decode_seg(slots.hidden, decoded, omg, class_map)[-1]  # [B·M, h, w]
  mask_logits = model.refine_seg_logits(
      mask_logits, batch['pixels'], jnp.repeat(jnp.arange(b, dtype=jnp.int32), opts.max_seg))
  masks = seg_masks_to_image(mask_logits, jnp.repeat(image_hw, opts.max_seg, axis=0),
                             decoded.reshape(-1), out_hw)
  m = opts.max_seg
  return dict(tokens=out.tokens, lengths=out.lengths, finished=out.finished, seg_valid=used,
              seg_is_rej=slots.is_rej & used, seg_step=slots.step, seg_logits=slots.logits,
              mask_logits=mask_logits.reshape(b, m, *mask_logits.shape[1:]),
              masks=masks.reshape(b, m, *out_hw), regions=slots.regions,
              prompt_length=plan.length)


def make_generate_fn(graphdef: nnx.GraphDef, opts: GenerateOptions):
  """jit((states...), batch, key) -> generate(...) for the model nnx.merge(graphdef, *states)."""

  @jax.jit
  def fn(states, batch, key):
    return generate(nnx.merge(graphdef, *states), batch, key, opts)

  return fn
