"""The embedded default: a tiny LIRA trained from scratch on the synthetic referring world
(lira_jax/data/synthetic.py), stage 0, 1 and 2, then evaluated on the val split. What
`python -m launch.train` runs with no flags; aimed at 15 minutes on 2 CPU cores, it took 14 min 50 s
(session 19, alone), 16 min 04 s from a fresh clone on session 20's slower machine and 14 min 09 s
from a fresh clone in session 22, with the [REJ] presence head; session 23's [SEG] selector and
region classifier made it 16 min 46 s, and the schedule below was shortened; session 24's faster
steps gave it back (README "The main job", "Session 24").

Arg: comma list of
  stage0 | stage1 | stage2  which stage's settings (default stage2; launch/train.py runs them in
                   turn)
  no_ilvc          answers without the local images (ILVC off in training and evaluation)
  no_sefe          stage 2 without the pre-LLM cross attention (SEFE fusion off)
  no_refine        no mask refiner (lira_jax/models/mask_refine.py; see MASK_REFINE)
  no_rejp          no [REJ] presence head (lira_jax/models/rej_presence.py; see REJ_PRESENCE)
  no_select        no [SEG] selector (lira_jax/models/seg_select.py; see SEG_SELECT)
  no_regcls        no region classifier (lira_jax/models/region_classify.py; see REGION_CLASSIFY)
  smoke            a few steps and a handful of eval samples (tests, quick checks)
  internvl0        stage 0 also pre-trains the InternVL side (InternViT + mlp1 + LLM, alone) on
                   image-text samples, for the stage-0 steps (see INTERNVL0_TASKS)

Departures from the released recipe (configs/lira_2b.py), all because nothing here is
pretrained:
- the pixel path is 4x wider than configs/omg_seg.py's tiny variant (PIXEL_DIMS, PIXEL_CHANNELS);
- stage 0 stands in for the OMG-Seg COCO-panoptic weights LIRA starts from: the pixel path
  (ConvNeXt + OMG-Seg head) alone learns panoptic segmentation of the synthetic scenes (one
  thing class per colour and shape, lira_jax/train/panoptic.py) against fixed class-name codes
  (colour code + shape code, standing in for the OV file's CLIP text embeddings). Stages 1 and
  2 then keep it frozen, as the released recipe does;
- the [SEG] path decodes with its own trainable copy of the OMG-Seg decoder layers, post-norm and
  mask embedding, seeded from stage 0 (OMG-LLaVA's `require_omg_decoder=True`; the released
  LIRA decodes with the frozen decoder itself). On the session-10 default it lifts RES cIoU
  from 0.434 to 0.510 (GRES 0.480 -> 0.567; one seed; frozen decoder in stage 2 only);
  `--set model.omg.head.seg_decoder_copy=False` on a fresh workdir turns it off;
- the semantic encoder and the whole LLM train in stages 1 and 2 from random weights (the
  released recipe freezes them, pretrained, and trains LoRA adapters; in stage 1 the semantic
  encoder sees only the ILVC region crops), with learning rates that suit a from-scratch model.
- two losses the release does not have: stage 0 makes each object query name its class by itself
  (loss.panoptic.query_cls_weight), stage 2 regresses each [SEG] query onto the object query
  covering its target (loss.pointer_weight); see QUERY_CLS_WEIGHT below;
- four modules the release does not have: stage 2 learns a full-resolution mask refiner from the
  image pixels (lira_jax/models/mask_refine.py; see MASK_REFINE below), standing in for the
  resolution a 1024-pixel input gives the released stride-4 masks; a [REJ] presence head that
  reads the panoptic class map for the noun being decided (lira_jax/models/rej_presence.py; see
  REJ_PRESENCE); a [SEG] selector that scores the panoptic queries by noun, size and place and
  decodes from the chosen one (lira_jax/models/seg_select.py; see SEG_SELECT); and a region
  classifier, trained in stages 0 and 2, whose full-resolution crops sharpen the class map the
  last two read (lira_jax/models/region_classify.py; see REGION_CLASSIFY).
Everything else (SEFE, the [SEG] path, the losses, stage 1 without InternVL tokens and with the
projection loss) is the released model at tiny sizes.
"""
import ml_collections

from configs import internvl2_2b, lira_common, omg_seg
from lira_jax.data import synthetic_panoptic

# Session 10 (README "The main job"): the pixel path was the bottleneck. After the old 350-step
# stage 0 of a (8, 16, 24, 32)-wide ConvNeXt its panoptic queries named the shape of a val object
# no better than chance (23 %, colour 98 %; best-query IoU 0.61); 2000 steps of the wider pixel
# path below: shape 80 %, IoU 0.70. On that pixel path stage 2 at lr 3e-3 collapsed the text-only
# [SEG]s (first [SEG] mean IoU 0.03, the post-ILVC one 0.57); at 1e-3 it does not. 600 stage-1
# steps instead of 40 lifted GRES (0.51 -> 0.57 cIoU, N-acc 0.91 -> 1.0, one seed).
# Session 11: the best panoptic query of each RES val target (an oracle choice of object) reaches
# only cIoU 0.682 after the 2000-step stage 0; a 4000-step one (lr 2e-3) gives 0.736 at its step
# 3000 and 0.769 at the end (lr 3e-3 x 3600: 0.695; batch 4 x 4000: 0.688), while a linear
# readout of the same mask features fitted per target reaches 0.89: the queries, not the
# features, bound the masks, and they keep improving with samples seen. End to end that does
# not carry over reliably: one 4000-step stage 0 gave RES cIoU 0.580, one 3500-step stage 0
# (oracle 0.713) 0.479 / 0.477 over two stage-2 seeds, one 2000-step stage 0 0.473 (session 10's:
# 0.510); 4000 steps would not fit 15 minutes, 3500 bought nothing measurable. So 2000.
# Session 14: shorter stages 1-2 fit 15 minutes but cost quality. Stages 0 / 1 / 2 of
# 2000 / 400 / 1000 ran in 14 min 06 s (RES cIoU 0.487, N-acc 0.870); 2000 / 600 / 1200 gave
# 0.505 / 0.891; this schedule gives 0.547 / 0.978 (all on 200 + 200 val expressions).
# Session 18: stage 1 of 200 steps instead of 600 (stage 2 on the session-15 default's stage 0,
# 1000 + 1000 val): RES cIoU 0.561, GRES 0.581, N-acc 0.94, against 0.576 / 0.583 / 0.93, inside
# the default's seed range (0.549-0.576). From scratch, 2000 / 200 / 1800 scored RES 0.577, GRES
# 0.573, N-acc 0.996 in 14 min 55 s, too close to 15 minutes; 1900 / 200 / 1500 took 12 min 57 s
# (RES 0.532, GRES 0.546, N-acc 0.95); 2000 / 200 / 1600 13 min 33 s (RES 0.567, GRES 0.566,
# N-acc 0.891). So 1700. Session 19: the mask refiner adds 22-28 ms to a stage-2 step and 10 s
# to the evaluation. With it, 2000 / 200 / 1500 took 14 min 15 s but chose the right object less
# often (RES cIoU 0.558, right object 0.693); 2000 / 200 / 1600 took 14 min 50 s (RES 0.594,
# GRES 0.591, N-acc 0.936). So 1600. On a GPU, stage 2 of 3400 steps instead of 1700 (no
# refiner) gave RES 0.587 against 0.574: stage-2 length is not what holds RES cIoU back.
# Session 23: the region classifier (+17 ms per stage-0 step), the [SEG] selector and the
# classifier again (+24 ms per stage-2 step) took the full run to 16 min 46 s (RES cIoU 0.723,
# N-acc 0.879). Stage 2 of 1100 steps on its stages 0-1 gave RES 0.685 / 0.690 (absent rate 0.75
# / 0.85; N-acc 0.867 / 0.863). 1800 / 100 / 1450 steps with 6 refined masks per step ran in
# 14 min 40 s from a fresh clone: RES 0.678 (0.677 with stage-2 seed 1); stage 2 of 1600 steps
# with 12 refined masks on its stages 0-1 scored 0.705, but paying for it with stage 0
# (1550 / 100 / 1600, 12 masks; 14 min 29 s) gave 0.637: stage 0 cannot give up more. So
# 1800 / 100 / 1450 with 6 masks. Session 24: faster steps (unrolled short layer stacks,
# point_sample's own VJP, the depthwise kernel gradient; README "Session 24") bought the time
# back. From fresh clones: 2000 / 200 / 1600 with 12 masks, RES cIoU 0.720, N-acc 0.823, but
# 15 min 25 s (before the last three speed-ups); 2000 / 100 / 1550 with 12 masks, 14 min 28 s,
# RES 0.697, N-acc 0.891 (0.710 / 0.887 with NOUN_WEIGHT 4); 2000 / 100 / 1600 with NOUN_WEIGHT
# 4, 15 min 06 s, RES 0.705, N-acc 0.867: compiling alone varied by 25 s between those runs.
# So 2000 / 100 / 1550 with 12 masks.
STAGE_OPTIM = {
    0: dict(lr=2e-3, steps=2000),
    1: dict(lr=2e-3, steps=100),
    2: dict(lr=1e-3, steps=1550),
}
# `internvl0`: a stand-in for InternVL's own pre-training, beside the pixel path's in stage 0.
# Measured (session 9, one run each; README "The main job"): trained alone on this mix for 2000
# steps of batch 16, the InternVL side reads its tokens for captions (val answer CE 0.57 vs 0.91
# with another image's tokens) and a little for `what` (0.72 vs 1.12), not for `where` (0.674 vs
# 0.678); end to end the first [SEG] stays image-blind (RES cIoU 0.352 with the true tokens, 0.352
# with another image's), against 0.293 for the same 1500-step stage 0 without it and 0.42 for
# session 9's default (350 stage-0 steps of a 4x narrower pixel path); session 9 ran it for 1500
# stage-0 steps, it now runs the default's. Not the default.
INTERNVL0_TASKS = dict(caption=0.25, vqa=0.25, what=0.25, where=0.25)
# Task mix per stage (synthetic.make_sample task_weights). Stage 1 is LIRA's pre-training: text
# answers about the image; stage 2 adds the segmentation tasks.
STAGE_TASKS = {
    0: {},  # bare scenes with panoptic targets (lira_jax/data/synthetic_panoptic.py)
    1: dict(gcg=0.3, attr=0.25, vqa=0.25, referring=0.2),
    2: dict(referring=0.4, gres=0.4, gcg=0.1, attr=0.05, vqa=0.05),
}
# The pixel path's widths (ConvNeXt stages; OMG-Seg head channels): 4x those of the golden-sized
# tiny variant of configs/omg_seg.py, whose queries name the shape of 58 % of the val objects
# after 2000 stage-0 steps (80 % at these widths).
PIXEL_DIMS = (32, 64, 96, 128)
PIXEL_CHANNELS = 64
MAX_TARGETS = 2  # gres expressions / gcg phrases per sample
# Training stream only (evaluation asks one expression per referring sample, absent rate 0.5).
# More absent GSVA targets balance [REJ] against [SEG] after an expression: 0.5 -> 0.75 took
# the val N-acc from 0.15 to 0.89 (session 4, on the GRES val split whose no-target wording gave
# absence away; README "Session 22"). Three referring turns per scene (LISA's recipe; 45 % more
# time per step) left RES cIoU where it was (0.441 vs 0.444), so one turn.
REFERRING_ROUNDS = 1
ABSENT_RATE = 0.75
# Session 12: the first [SEG] picks the right object for only 59 % of RES val targets, and bare
# shape expressions fail: neither the [SEG] state nor the stage-0 object queries g carry the
# target's shape linearly (probe 35 % / 34 %, colour 81 % / 92 %). Stage 0's query-class loss
# (g must name its class alone, lira_jax/train/panoptic.py query_class_loss) plus the [SEG]
# pointer loss (lira_jax/train/seg_pointer.py), both at 2.0: RES cIoU 0.547 and 0.558 over two
# seeds (right object 75 %), GRES 0.550 / 0.584, N-acc 0.978 / 0.935, against 0.473 / 0.478 /
# 0.510 for runs without them. Session 13: scoring the query-class term with the main term's
# matching instead gave 0.467 (right object 65 %). Cost per step: stage 0 +13 % (0.238 vs 0.210
# s), stage 2 +3 % (0.250 vs 0.243 s), measured in session 13. Session 14: on the val objects'
# best queries, g classified alone still names the shape only 34 % of the time (the mask-pooled
# classifier: 83 %), so the gain does not come from shape in g.
# Off: --set loss.panoptic.query_cls_weight=0 --set loss.pointer_weight=0.
QUERY_CLS_WEIGHT = 2.0
POINTER_WEIGHT = 2.0
# Session 19: 76 % of the pixels a correctly chosen first-[SEG] mask gets wrong lie within 2 px
# of the object's outline (the stride-4 grid is 32 x 32 here), and keeping the dilated mask's
# pixels of its own colour lifts the IoU of right-object masks from 0.73 to 0.84 with no
# learning at all. The mask refiner (lira_jax/models/mask_refine.py) learns that correction in
# stage 2. Off: config arg no_refine.
MASK_REFINE = dict(channels=16, layers=3, window=48)
REFINE_MAX_MASKS = 12  # refined and supervised per training batch (of ~15 valid [SEG] slots)
# Session 22: with no-target expressions worded like present ones, the default's [REJ] decision
# fell to the prior (N-acc 0.18, T-acc 0.91; stage 2 on the same stages 0-1): the LLM does not
# look the named object up among its image tokens. The presence head (two supervised noun heads
# on the LLM state reading the frozen class map) gives N-acc 0.78, T-acc 0.97, GRES cIoU 0.567
# (0.469), RES cIoU 0.590 (0.585), at no measurable step time. The class probabilities added to
# the LLM's object tokens gave N-acc 0.14, an unsupervised cosine lookup 0.23-0.41 (README
# "Session 22"). Off: config arg no_rejp.
REJ_PRESENCE = True
# Session 24: weight 4 instead of 1 (stage 2 on the 2000 / 100 stages 0-1 of a fresh clone of
# acefd59, 1550 steps): RES cIoU 0.710 against 0.697, GRES 0.714 against 0.681, N-acc 0.887
# against 0.891, T-acc 0.979 against 0.973; one run each.
NOUN_WEIGHT = 4.0
# Session 25: each [REJ] decision's NLL counts twice in the text loss (loss.rej_token_weight; the
# release: 1), a prior shift of log 2 towards "no target". Stage 2 on the stages 0-1 of a fresh
# clone of 4a1dc2b: N-acc 0.911 at T-acc 0.973, RES cIoU 0.712 (weight 1: 0.895 / 0.983 / 0.718);
# on the test split 0.925 / 0.957 / 0.714 (weight 1: 0.921 / 0.969 / 0.714).
REJ_TOKEN_WEIGHT = 2.0
# Session 23: the [SEG] selector (MAttNet-style scores of the frozen panoptic queries from the
# noun, size and place; lira_jax/models/seg_select.py). Off: config arg no_select.
SEG_SELECT = True
SELECT_WEIGHT = 1.0
# Session 23: the presence head and the selector read a class map whose colour x shape comes from
# a small CNN on full-resolution crops of each query's box (lira_jax/models/region_classify.py),
# trained on the scenes' objects in stage 0 (beside the pixel path) and stage 2. Off: config arg
# no_regcls.
REGION_CLASSIFY = dict(crop=24, channels=16)
REGION_WEIGHT = 1.0
# Session 25: the region classifier learns at 5x the stage's learning rate. Trained offline on
# 63k labelled query crops of the session-24 default's frozen pixel path (3500 steps of 63 crops,
# cosine), it names the shape of 90.8 % of the val crops at lr 2e-3, 94.5 % at 5e-3, 95.5 % at
# 1e-2 (the in-run classifier: 90.3 %); 24 channels instead of 16 reach 93.2 % at 2e-3 but cost
# 9 ms per stage-0 step. Full runs from fresh clones: 5x gave RES cIoU 0.718, N-acc 0.895, T-acc
# 0.983 (0.710 / 0.887 / 0.979 without); 10x 0.693 / 0.823 / 0.956 (its stage-0 region loss ended
# at 0.55 against 0.31 for 5x and 0.37 without).
REGION_LR_SCALE = 5.0
# RES and GRES val samples each. Session 15: 200 left differences between variants smaller than
# the measurement's own error. The session-13 default's checkpoint scores RES cIoU 0.547 on 200
# and 0.576 on 1000; its two seeds differ by 0.027 on 1000. 1000 + 1000 take 39 s alone (200 +
# 200: 17-20 s).
EVAL_EXPRESSIONS = 1000
# Session 25: GCG val samples whose grounded phrases are scored (teacher-forced,
# lira_jax/eval/region_naming.py), where ILVC shows: on the default, 35 % of the phrases come out
# whole (the colour word always, the shape word 35 %); with ILVC off (stages 1-2 on the default's
# stage 0) 5 % (colour 36 %). 200 samples (400 phrases) add ~3 s to the evaluation.
EVAL_GCG = 200


def get_config(arg=None):
  parts = {p for p in (arg or '').split(',') if p}
  stages = parts & {'stage0', 'stage1', 'stage2'}
  unknown = parts - {'stage0', 'stage1', 'stage2', 'no_ilvc', 'no_sefe', 'no_refine', 'no_rejp',
                     'no_select', 'no_regcls', 'smoke', 'internvl0'}
  if unknown or len(stages) > 1:
    raise ValueError(f'bad config arg {arg!r}: comma list of stage0|stage1|stage2, no_ilvc, '
                     'no_sefe, no_refine, no_rejp, no_select, no_regcls, smoke, '
                     'internvl0')
  stage = int(stages.pop()[-1]) if stages else 2
  smoke = 'smoke' in parts
  internvl0 = stage == 0 and 'internvl0' in parts
  # Stage 0 builds the stage-1 model (its pixel path is all that runs).
  omg = omg_seg.get_config('tiny')
  omg.backbone.dims = omg.head.in_channels = PIXEL_DIMS
  omg.head.feat_channels = PIXEL_CHANNELS
  omg.head.enc_ffn = omg.head.dec_ffn = 2 * PIXEL_CHANNELS
  c = lira_common.lira_config(internvl2_2b.get_config('tiny'), tiny=True, stage=max(stage, 1),
                              lora_rank=0, lora_alpha=0.0, omg=omg)
  c.stage = stage

  m = c.model
  m.omg.image_size = 128  # scenes are drawn at this side: no resize between scene and masks
  m.omg.head.enc_layers, m.omg.head.dec_layers = 1, 2
  m.omg.head.num_things, m.omg.head.num_stuff = len(synthetic_panoptic.CLASSES), 0
  m.omg.head.class_factors = synthetic_panoptic.CLASS_FACTORS
  m.omg.head.seg_decoder_copy = stage >= 1
  m.llm.hidden_size, m.llm.num_layers, m.llm.num_heads, m.llm.num_kv_heads = 96, 3, 4, 2
  m.llm.head_dim, m.llm.mlp_dim = 24, 256
  m.llm.max_position_embeddings = 256
  m.sefe.add_cross = stage == 2 and 'no_sefe' not in parts
  if stage == 2 and 'no_refine' not in parts:  # the only stage with [SEG] masks
    m.mask_refine = ml_collections.ConfigDict(MASK_REFINE)
  m.rej_presence = REJ_PRESENCE and stage == 2 and 'no_rejp' not in parts  # GRES: stage 2 only
  m.seg_select = SEG_SELECT and stage == 2 and 'no_select' not in parts
  # Trained with the pixel path in stage 0 (the scenes' objects are its labels there too) and
  # again in stage 2; stage 1 leaves it as it is (no labels).
  if 'no_regcls' not in parts and REGION_CLASSIFY and (REJ_PRESENCE or SEG_SELECT):
    m.region_classify = ml_collections.ConfigDict(REGION_CLASSIFY)
  c.tiling = ml_collections.ConfigDict(dict(image_size=m.vision.image_size, min_tiles=1,
                                            max_tiles=1, use_thumbnail=False))
  # Each ILVC target (a referring turn, a gcg phrase) takes a region and two [SEG] slots.
  regions = max(REFERRING_ROUNDS, MAX_TARGETS)
  c.seq = ml_collections.ConfigDict(dict(max_len=32 + 64 * regions, max_tiles=1, max_queries=12,
                                         max_regions=regions, max_seg=2 * regions))
  if internvl0:  # 16 image tokens + at most ~60 text tokens
    c.seq.max_len = 96
  # cls_embed stands for the OV file's CLIP text embeddings: fixed, as in OMG-Seg.
  internvl_side = (r'^vision\.', r'^llm\.') if internvl0 else ()
  c.trainable = {0: (r'^omg\.(?!decoder\.cls_embed$)', r'^region_classifier\.', *internvl_side),
                 1: (r'^(?!omg\.|region_classifier\.)',),
                 2: (r'^(?!omg\.)', r'^omg\.decoder\.\w+_llm\.')}[stage]
  c.loss.num_points = 1024
  c.loss.panoptic = ml_collections.ConfigDict(dict(  # Mask2Former's weights
      cls_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1,
      query_cls_weight=QUERY_CLS_WEIGHT))
  c.loss.pointer_weight, c.loss.pointer_min_iou = POINTER_WEIGHT, 0.5
  c.loss.refine_weight, c.loss.refine_max_masks = 1.0, REFINE_MAX_MASKS
  c.loss.noun_weight = NOUN_WEIGHT
  c.loss.rej_token_weight = REJ_TOKEN_WEIGHT
  c.loss.select_weight = SELECT_WEIGHT
  c.loss.region_weight = REGION_WEIGHT

  o = STAGE_OPTIM[stage]
  c.optim.update(lr=o['lr'], warmup_ratio=0.05, warmup_start_factor=0.01, weight_decay=0.0,
                 grad_accum=1)
  del c.optim['batch_per_device']  # the loop's global batch is cfg.train.batch_size
  if m.get('region_classify'):
    c.optim.lr_scale = ((r'^region_classifier\.', REGION_LR_SCALE),)
  c.data = ml_collections.ConfigDict(dict(
      world_seed=0, image_size=m.omg.image_size, max_targets=MAX_TARGETS, max_objects=6,
      referring_rounds=REFERRING_ROUNDS, absent_rate=ABSENT_RATE,
      ilvc='no_ilvc' not in parts,
      task_weights=INTERNVL0_TASKS if internvl0 else STAGE_TASKS[stage], worker_threads=1,
      prefetch=4, object_labels=stage == 2 and bool(m.get('region_classify')),
      tfds_dir=''))  # '' generates on the fly; else a lira_jax.data.tfds_synthetic dataset dir
  c.train = ml_collections.ConfigDict(dict(
      steps=8 if smoke else o['steps'], batch_size=8, seed=0, log_every=1 if smoke else 25,
      checkpoint_every=2 if smoke else 500, keep_checkpoints=2))
  c.eval = ml_collections.ConfigDict(dict(
      split='val', num_res=8 if smoke else EVAL_EXPRESSIONS,
      num_gres=8 if smoke else EVAL_EXPRESSIONS, num_gcg=8 if smoke else EVAL_GCG,
      gcg_own_regions=False, batch_size=8,
      num_overlays=2 if smoke else 8))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c
