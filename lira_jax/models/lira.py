"""The assembled LIRA model: encode the image both ways, fuse (SEFE), splice the multimodal
sequence, run the LLM, and decode every [SEG] hidden state to a mask with the OMG-Seg
decoder. GSVA's [REJ] targets take a [SEG] slot but produce no mask.

Axis letters: B batch, T tiles per image (buffer), R ILVC region slots, Lt text buffer, L packed
sequence buffer, M [SEG]/[REJ] slots per sample, K target masks per sample, H LLM hidden,
S OMG-Seg input side, s tile side.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from lira_jax import sequence
from lira_jax.models.intern_vit import SemanticEncoder
from lira_jax.models.llm import LLM
from lira_jax.models.mask_refine import MaskRefiner
from lira_jax.models.omg_seg import OMGSeg
from lira_jax.models.region_classify import RegionClassifier, region_class_logits
from lira_jax.models.rej_presence import RejPresence
from lira_jax.models.sefe import SEFE, VisualTokens
from lira_jax.models.seg_select import SegSelect, query_features
from lira_jax.models.seg_projector import TextToVision


@struct.dataclass
class LiraOutputs:
  """logits f32[B, L, V]; plan: the packed-sequence layout (labels, [SEG] slots, ...);
  seg_mask_logits f32[P, B·M, h, w] ([SEG] decoding, P prediction steps; zeros on slots that are
  padding or [REJ]); seg_valid bool[B·M] (slots that were decoded to a mask); hidden
  f32[B, L, H] final-normed LLM states; query_feat f32[B, Q, 2C] the OMG query vectors g and
  query_keep bool[B, Q] the queries that do not own every prior cell (stage-1 projection loss);
  seg_queries f32[B·M, 2C] the [SEG] states' own projection (text2vision); query_mask_logits
  f32[B, Q, h, w] the panoptic pass's final masks (stride 4); seg_select_scores f32[B·M, Q] and
  seg_gate f32[B·M] (logits) when the model has a [SEG] selector
  (lira_jax/models/seg_select.py), else None; region_classes (colour f32[B, Q, C], shape
  f32[B, Q, T] logits) when it has a region classifier (lira_jax/models/region_classify.py).
  Under jit, fields a caller drops cost nothing."""
  logits: jax.Array
  plan: sequence.SequencePlan
  seg_mask_logits: jax.Array
  seg_valid: jax.Array
  hidden: jax.Array
  query_feat: jax.Array
  query_keep: jax.Array
  seg_queries: jax.Array
  query_mask_logits: jax.Array
  seg_select_scores: jax.Array | None = None
  seg_gate: jax.Array | None = None
  region_classes: tuple[jax.Array, jax.Array] | None = None


class LIRA(nnx.Module):
  """Param tree: vision (InternViT + mlp1), llm, omg (ConvNeXt + OMG-Seg head), projector
  (SEFE), text2vision ([SEG] projector). cfg: a configs/lira_*.py config."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, with_backbone: bool = True):
    m = cfg.model
    dtype, param_dtype = jnp.dtype(m.dtype), jnp.dtype(m.param_dtype)
    mods = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    h = m.llm.hidden_size
    self.vision = SemanticEncoder(m.vision, m.projector, h, remat_policy=m.remat_policy, **mods)
    self.llm = LLM(m.llm, remat_policy=m.remat_policy, **mods)
    # Which parts train is cfg.trainable's business alone (the released recipe freezes vision and
    # omg; the synthetic world, with nothing pretrained, trains them). The pixel path is
    # numerically sensitive (hard thresholds in the panoptic prior): always float32.
    self.omg = OMGSeg(m.omg, with_backbone=with_backbone, rngs=rngs)
    self.projector = SEFE(m.sefe, h, **mods)
    self.text2vision = TextToVision(h, m.text2vision.out_dim, **mods)
    self.rej_presence = (RejPresence(h, tuple(m.omg.head.class_factors), **mods)
                         if m.get('rej_presence') else None)
    self.seg_select = (SegSelect(h, m.text2vision.out_dim, tuple(m.omg.head.class_factors),
                                 **mods) if m.get('seg_select') else None)
    regions = m.get('region_classify')
    self.region_classifier = (RegionClassifier(regions, tuple(m.omg.head.class_factors),
                                               rngs=rngs) if regions else None)
    refine = m.get('mask_refine')
    self.mask_refiner = MaskRefiner(refine, rngs=rngs) if refine else None
    self.stage = int(cfg.stage)
    self.tokens = dict(cfg.tokens)
    self.max_len, self.max_seg = int(cfg.seq.max_len), int(cfg.seq.max_seg)
    self.max_queries = int(cfg.seq.max_queries)
    grid = m.vision.image_size // m.vision.patch_size
    self.tokens_per_tile = int(round(grid * m.projector.downsample_ratio) ** 2)

  def encode_tiles(self, tiles: jax.Array) -> jax.Array:
    """tiles f32[B, T, s, s, 3] -> semantic tokens f32[B, T·N, H] (tile-major)."""
    b, t = tiles.shape[:2]
    feats = self.vision(tiles.reshape(b * t, *tiles.shape[2:]))
    return feats.reshape(b, t * feats.shape[1], feats.shape[2])

  def encode_images(self, batch: dict, *, pixel_feats=None):
    """The image side of a batch (pixels f32[B, S, S, 3], tiles f32[B, T, s, s, 3], tile_valid
    bool[B, T]) -> (OMG-Seg outputs, SEFE visual tokens). pixel_feats: optional precomputed
    backbone maps (to run without a ConvNeXt)."""
    omg = (self.omg(batch['pixels'], max_valid=self.max_queries) if pixel_feats is None else
           self.omg.from_features(pixel_feats, max_valid=self.max_queries))
    prior = omg.prior
    if self.stage == 1:  # stage 1 feeds no InternVL tokens (onlyomg_pretrain)
      semantic, semantic_valid = None, None
    else:
      semantic = self.encode_tiles(batch['tiles'])
      semantic_valid = jnp.repeat(batch['tile_valid'], self.tokens_per_tile, axis=1)
    visual = self.projector(omg.clip_feature, prior.query_pos_feat, prior.valid, semantic,
                            semantic_valid, max_queries=self.max_queries)
    return omg, visual

  def embed_sequence(self, batch: dict, visual, region_tokens: jax.Array, region_valid: jax.Array
                     ) -> tuple[sequence.SequencePlan, jax.Array]:
    """ids / labels i32[B, Lt], text_valid bool[B, Lt] with the visual tokens and region tokens
    f32[B, R, N, H] (R may be 0) -> (plan, LLM input embeddings f32[B, L, H])."""
    plan = sequence.plan_sequence(
        batch['ids'], batch['labels'], batch['text_valid'], visual.valid, region_valid,
        region_tokens=self.tokens_per_tile, max_len=self.max_len, max_seg=self.max_seg,
        tokens=self.tokens)
    text_embeds = self.llm.embed_tokens(sequence.text_embed_ids(batch['ids']))
    return plan, sequence.gather_sequence(plan, text_embeds, visual.tokens, region_tokens)

  def internvl_logits(self, batch: dict) -> tuple[jax.Array, sequence.SequencePlan]:
    """The InternVL model alone (InternViT -> mlp1 -> LLM, the image's semantic tokens in place
    of `<image>`; no pixel path, no SEFE): what the synthetic stage 0 pre-trains in place of
    InternVL's own pre-training. batch: tiles f32[B, T, s, s, 3], tile_valid bool[B, T], ids /
    labels i32[B, Lt], text_valid bool[B, Lt] -> (logits f32[B, L, V], plan)."""
    semantic = self.encode_tiles(batch['tiles'])
    visual = VisualTokens(tokens=semantic, valid=jnp.repeat(batch['tile_valid'],
                                                            self.tokens_per_tile, axis=1))
    b, _, h = semantic.shape
    no_regions = jnp.zeros((b, 0, self.tokens_per_tile, h), semantic.dtype)
    plan, embeds = self.embed_sequence(batch, visual, no_regions, jnp.zeros((b, 0), bool))
    return self.llm(embeds, plan.valid), plan

  def region_classes(self, omg, pixels: jax.Array) -> tuple[jax.Array, jax.Array] | None:
    """The region classifier's (colour f32[B, Q, C], shape f32[B, Q, T]) logits for the
    panoptic queries of pixels f32[B, S, S, 3]; None without one."""
    if self.region_classifier is None:
      return None
    return self.region_classifier(pixels, omg.decoder.mask_logits[-1])

  def class_map(self, omg, region_classes) -> jax.Array:
    """The class map f32[B, Q, C·T+1] the [REJ] presence head and the [SEG] selector read:
    the frozen panoptic one, with region_classes (`region_classes`) in place of its thing
    classes when given."""
    class_logits = jax.lax.stop_gradient(omg.decoder.class_logits[-1])
    if region_classes is None:
      return class_logits
    return region_class_logits(*region_classes, class_logits)

  def seg_queries(self, hidden: jax.Array, omg, class_map: jax.Array
                  ) -> tuple[jax.Array, jax.Array, tuple | None]:
    """[SEG] hidden states f32[B, M, H] (final-normed), class_map (`class_map`) -> (the
    OMG-Seg queries to decode
    f32[B·M, 2C], the states' own projection f32[B·M, 2C], (selector scores f32[B·M, Q], gate
    logits f32[B·M]) or None). Without a selector the first two are the same."""
    b, m = hidden.shape[:2]
    flat = hidden.reshape(b * m, -1)
    own = self.text2vision(flat).astype(jnp.float32)
    if self.seg_select is None:
      return own, own, None
    image_index = jnp.repeat(jnp.arange(b, dtype=jnp.int32), m)
    phi = query_features(class_map, omg.decoder.mask_logits[-1], omg.prior.valid)
    queries, scores, gate = self.seg_select(flat, own, image_index, omg.prior.query_pos_feat,
                                            class_map, phi)
    return queries, own, (scores, gate)

  def decode_queries(self, queries: jax.Array, valid: jax.Array, omg) -> jax.Array:
    """OMG-Seg queries f32[B·M, 2C], valid bool[B, M] -> mask logits f32[P, B·M, h, w]
    (P prediction steps; zeros where not valid)."""
    b, m = valid.shape
    image_index = jnp.repeat(jnp.arange(b, dtype=jnp.int32), m)
    return self.omg.forward_seg(queries, image_index, valid.reshape(-1), omg.mask_features,
                                omg.memories).mask_logits

  def decode_seg(self, hidden: jax.Array, valid: jax.Array, omg, class_map: jax.Array
                 ) -> jax.Array:
    """[SEG] hidden states f32[B, M, H] (final-normed), valid bool[B, M] -> mask logits
    f32[P, B·M, h, w] (P prediction steps; zeros where not valid)."""
    return self.decode_queries(self.seg_queries(hidden, omg, class_map)[0], valid, omg)

  def refine_seg_logits(self, mask_logits: jax.Array, pixels: jax.Array,
                        image_index: jax.Array) -> jax.Array:
    """[SEG] mask logits f32[N, h, w] (stride 4) of images pixels f32[B, S, S, 3] (image_index
    i32[N]) -> refined logits f32[N, S, S] when the model has a mask refiner
    (lira_jax/models/mask_refine.py); without one, mask_logits unchanged. Callers resize the
    result to their output size either way."""
    if self.mask_refiner is None:
      return mask_logits
    return self.mask_refiner(mask_logits, pixels, image_index)

  def decision_logits(self, logits: jax.Array, hidden: jax.Array, class_map: jax.Array
                      ) -> jax.Array:
    """LM logits f32[B, L, V] with the presence head's [REJ]-vs-[SEG] offset (unchanged without
    one); hidden f32[B, L, H] the final-normed states that produced them; class_map
    (`class_map`)."""
    if self.rej_presence is None:
      return logits
    # The class map trains only through region_class_loss, not through the decisions.
    offset = self.rej_presence(hidden, jax.lax.stop_gradient(class_map))
    # Split between [REJ] (+) and [SEG] (-): where neither is the next token both are unlikely
    # and the offset gets no gradient, so only the [SEG]/[REJ] decisions train it.
    half = 0.5 * offset.astype(logits.dtype)
    logits = logits.at[..., int(self.tokens['rej'])].add(half)
    return logits.at[..., int(self.tokens['seg'])].add(-half)

  def __call__(self, batch: dict, *, pixel_feats=None) -> LiraOutputs:
    """batch: the image side of `encode_images`, regions f32[B, R, s, s, 3], region_valid
    bool[B, R], ids / labels i32[B, Lt] (with sequence.IMAGE_TOKEN_INDEX sentinels),
    text_valid bool[B, Lt]."""
    omg, visual = self.encode_images(batch, pixel_feats=pixel_feats)
    regions = batch['regions']
    b, r = regions.shape[:2]
    region_tokens = self.encode_tiles(regions).reshape(b, r, self.tokens_per_tile, -1)
    plan, embeds = self.embed_sequence(batch, visual, region_tokens, batch['region_valid'])
    out = self.llm(embeds, plan.valid, return_hidden_states=True)

    # [SEG] hidden states (final-normed, where the input token is [SEG]) -> OMG-Seg queries.
    hidden = jnp.take_along_axis(out['last_hidden'], plan.seg_index[..., None], axis=1)
    seg_valid = plan.seg_valid & ~plan.seg_is_rej
    region_classes = self.region_classes(omg, batch['pixels'])
    class_map = self.class_map(omg, region_classes)
    queries, own, select = self.seg_queries(hidden, omg, jax.lax.stop_gradient(class_map))
    scores, gate = select if select is not None else (None, None)
    return LiraOutputs(logits=self.decision_logits(out['logits'], out['last_hidden'], class_map),
                       plan=plan,
                       seg_mask_logits=self.decode_queries(queries, seg_valid, omg),
                       seg_valid=seg_valid.reshape(-1), hidden=out['last_hidden'],
                       query_feat=omg.prior.query_pos_feat,
                       query_keep=omg.prior.attention_mask.sum(-1) > 0,
                       seg_queries=own, query_mask_logits=omg.decoder.mask_logits[-1],
                       seg_select_scores=scores, seg_gate=gate, region_classes=region_classes)

  def reproject_queries(self, query_feat: jax.Array) -> jax.Array:
    """Stage-1 projection path g -> query_proj -> model -> text2vision: f32[..., 2C] -> [..., 2C]
    (trained to be the identity, so [SEG] states land in OMG query space)."""
    return self.text2vision(self.projector.query_tokens(query_feat))


def seg_targets(plan: sequence.SequencePlan, gt_masks: jax.Array) -> jax.Array:
  """The target mask of every [SEG] slot: gt_masks f32[B, K, Hg, Wg] -> f32[B·M, Hg, Wg]
  (each target's mask serves both [SEG]s of its ILVC pair)."""
  index = jnp.clip(plan.seg_target, 0, gt_masks.shape[1] - 1)
  picked = jnp.take_along_axis(gt_masks, index[:, :, None, None], axis=1)
  return picked.reshape(-1, *gt_masks.shape[2:])

