"""LIRA configs: an InternVL2 base (semantic encoder + LLM) + the OMG-Seg pixel path + SEFE +
the [SEG] projector, with stage-1 / stage-2 training settings as released (lira_reference.md §11,
§16). Per-size files call `lira_config`; their arg is a comma list of 'tiny' and 'stage1'/'stage2'.
"""
from __future__ import annotations

import ml_collections

from configs import omg_seg

# Released LIRA token ids (added in this order after the 92553-token InternVL2 vocabulary), then
# GSVA's [REJ].
RELEASED_TOKENS = dict(seg=92553, p_start=92554, p_end=92555, region=92556, mark=92557,
                       image_id=92558, rej=92559, im_end=92542, im_start=92543, bos=1, eos=2)
# The same layout inside the tiny 200-token test vocabulary (matching golden internvl2_tiny's
# <|im_end|> = 189, <|im_start|> = 190), with the LIRA tokens appended at 200..206.
TINY_TOKENS = dict(seg=200, p_start=201, p_end=202, region=203, mark=204, image_id=205, rej=206,
                   im_end=189, im_start=190, bos=1, eos=2)

LLM_LINEARS = r'^llm\.(layers\.(wq|wk|wv|wo|w1|w2|w3)|lm_head)$'


def parse_arg(arg: str | None) -> tuple[bool, int]:
  """'tiny', 'stage1', 'stage2' in any comma-separated combination -> (tiny, stage)."""
  parts = {p for p in (arg or '').split(',') if p}
  unknown = parts - {'tiny', 'stage1', 'stage2'}
  if unknown or {'stage1', 'stage2'} <= parts:
    raise ValueError(f'bad config arg {arg!r}: use a comma list of tiny, stage1|stage2')
  return 'tiny' in parts, 1 if 'stage1' in parts else 2


def lira_config(base: ml_collections.ConfigDict, *, tiny: bool, stage: int, lora_rank: int,
                lora_alpha: float, clip_feat_channel: int | None = None,
                omg: ml_collections.ConfigDict | None = None):
  """base: an InternVL2 config (configs/internvl2_*.py) of the matching size; omg: the pixel
  path's configs.omg_seg config (default: the released one, or its tiny variant)."""
  c = base
  omg = omg or omg_seg.get_config('tiny' if tiny else None)
  tokens = TINY_TOKENS if tiny else RELEASED_TOKENS
  # Vocabulary: InternVL2 rows + 6 LIRA tokens + [REJ].
  c.model.llm.vocab_size = max(tokens.values()) + 1
  c.model.omg = omg
  query_channels = omg.head.feat_channels
  c.model.sefe = ml_collections.ConfigDict(dict(
      query_channels=query_channels, clip_feat_channel=clip_feat_channel or omg.backbone.dims[-1],
      pixel_shuffle_ratio=omg.head.pixel_shuffle_down_ratio, projector_depth=2,
      cross_heads=32, add_cross=stage == 2, onlyomg_pretrain=stage == 1,
      variant='released'))
  c.model.text2vision = ml_collections.ConfigDict(dict(out_dim=2 * query_channels))
  c.tokens = ml_collections.ConfigDict(tokens)
  c.stage = stage
  if tiny:
    c.seq = ml_collections.ConfigDict(dict(max_len=256, max_tiles=3, max_queries=12,
                                           max_regions=2, max_seg=4))
  else:
    # stage 2: 1024 text tokens + 7 tiles·256 + 258 + 256 queries + regions; stage 1: 4096 text.
    c.seq = ml_collections.ConfigDict(dict(
        max_len=4096 if stage == 2 else 4608, max_tiles=7, max_queries=256,
        max_regions=4 if stage == 2 else 0, max_seg=16 if stage == 2 else 0))
  c.loss = ml_collections.ConfigDict(dict(
      text_weight=1.0, dice_weight=0.5, bce_weight=2.0, num_points=12544 if not tiny else 256,
      oversample_ratio=3.0, importance_sample_ratio=0.75, proj_weight=10.0, dice_eps=1.0))
  c.lora = ml_collections.ConfigDict(dict(
      rank=lora_rank if stage == 2 else 0, alpha=float(lora_alpha) if stage == 2 else 0.0,
      dropout=0.05, target_pattern=LLM_LINEARS))
  # Trainable selection (regexes over dotted param paths), lira_reference.md §11.
  if stage == 1:
    c.trainable = (r'^projector\.(?!cross_beforellm)', r'^text2vision\.')
  else:
    c.trainable = (r'^projector\.', r'^text2vision\.', r'\.lora_[ab]$', r'^llm\.embed\.',
                   r'^llm\.lm_head\.kernel$')
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3 if stage == 1 else 2e-5, b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0,
      warmup_ratio=0.03, warmup_start_factor=1e-5, epochs=1,
      batch_per_device=8 if stage == 1 else 1, grad_accum=4 if stage == 1 else 16))
  c.model.remat_policy = 'nothing_saveable' if not tiny else None
  c.data = ml_collections.ConfigDict(dict(
      kind='mixture', root='/data/lira', tokenizer_dir='', seed=0, ilvc=True, worker_threads=8,
      prefetch=4, sources=released_sources(stage)))
  # Global batch per step for 8 devices (scale with the mesh); steps: the released recipe runs
  # one epoch of its mixture, so set train.steps from your data's size. init_params: a directory
  # written by convert/ (python -m convert.lira ...) to start from.
  c.train = ml_collections.ConfigDict(dict(
      steps=1000, seed=0, log_every=10, checkpoint_every=500, keep_checkpoints=3,
      init_params='', batch_size=8 * c.optim.batch_per_device * c.optim.grad_accum))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c


def released_sources(stage: int) -> dict:
  """The released mixtures (lira_reference.md §11) as mixture_pipeline sources; paths are
  relative to cfg.data.root (laid out as the released repository's ./data)."""
  if stage == 1:
    return dict(pretrain=dict(reader='llava', args=dict(
        json_path='pretrained/stage1.json', image_dir='pretrained/images'), repeat=1))
  refs = lambda name, split_by: dict(reader='refcoco', repeat=3, args=dict(
      refs_path=f'ref_seg/{name}/refs({split_by}).p',
      instances_path=f'ref_seg/{name}/instances.json', image_dir='coco/train2014',
      split='train', name=name))
  gcg_source = lambda json_path, image_dir, fmt, repeat=1: dict(
      reader='gcg', repeat=repeat, args=dict(json_path=json_path, image_dir=image_dir, fmt=fmt))
  return dict(
      sft=dict(reader='llava', repeat=1, args=dict(json_path='finetune/internvl_sft.json',
                                                   image_dir='finetune/images')),
      refcoco=refs('refcoco', 'unc'), refcoco_plus=refs('refcoco+', 'unc'),
      refcocog=refs('refcocog', 'umd'),
      refcocog_gcg=gcg_source('glamm_data/annotations/gcg_train/RefCOCOg_GCG_train.json',
                              'coco/train2014', 'refcocog'),
      grandf_gcg=gcg_source('glamm_data/annotations/gcg_train/grand_f_gcg_train.json',
                            'glamm_data/images/grandf/train', 'grandf', repeat=10),
      openpsg_gcg=gcg_source('glamm_data/annotations/gcg_train/OpenPsgGCG_train.json',
                             'coco/train2017', 'grandf'))
