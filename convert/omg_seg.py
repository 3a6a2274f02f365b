"""OMG-Seg checkpoints (mmdet names) + open_clip ConvNeXt (timm names) <-> lira_jax OMGSeg params.

  python -m convert.omg_seg --src OMG_SEG_PTH [--clip CLIP_CKPT] [--ov-embed OV_FILE] --out OUT
                            [--verify DIR] [--config configs/omg_seg.py[:tiny]]
  python -m convert.omg_seg --src OMG_SEG_PTH [--clip CLIP_CKPT] --check [--config ...]

Sources (each a .pth read weights-only through convert.pth_io, or safetensors):
  --src       omg_seg_convl.pth: `panoptic_head.*` and, in the released file, the frozen CLIP
              trunk as `backbone.*` (stem, layer{1..4}, head.{0,1}).
  --clip      open_clip convnext_large_d_320: `visual.trunk.*` / `visual.head.*` + the text tower.
  --ov-embed  the OV class-embedding tensor f32[K, P, D] (a file holding exactly one tensor).

Policy, the same as LIRA's loading order (CLIP weights first, then the OMG-Seg file over them):
  * backbone from `backbone.*` when --src has it (then --clip's `visual.*` is skipped as
    superseded), else from --clip's `visual.trunk.*`, else no backbone (a head-only model fed
    with backbone features, e.g. the golden head sets).
  * The CLIP image head (`backbone.head.*`, `visual.trunk.head.*`, `visual.head.*`) and the
    open_clip text tower are skipped by name pattern: LIRA never runs them (open-vocabulary
    inference is off; class embeddings come precomputed).
  * `decoder.cls_embed` is a non-persistent buffer, in no checkpoint: set from --ov-embed
    (background prototypes appended) or to zeros, and said so by name in the log.

Config: --config, else a golden-style config.json beside --src, else the real LIRA settings
(configs/omg_seg.py). Export writes the OMG-Seg key layout (without cls_embed, as released).
"""
from __future__ import annotations

import json
import pathlib
import sys

import jax.numpy as jnp
import ml_collections

from configs import omg_seg as omg_seg_config
from convert import cli, keymap
from convert.keymap import CONV, LINEAR, Transform, r, split_rows
from convert.pth_io import MergedReader, open_checkpoint
from convert.safetensors_io import TensorInfo

OV_KEY = 'ov_class_embed'  # the --ov-embed tensor's name in the merged source


# ---------------------------------------------------------------------------------------------
# Named transforms specific to this family.

def _cls_embed_forward(ov):
  """OV file f32[K, P, D] -> cls_embed f32[D, K+1, P], zero background prototypes appended (as
  the original builds its buffer). jnp so that shapes can be planned with eval_shape."""
  background = jnp.zeros((1, *ov.shape[1:]), ov.dtype)
  return (jnp.concatenate([ov, background], axis=0).transpose(2, 0, 1),)


# Export drops it: the released OMG-Seg checkpoint does not hold the OV embeddings.
CLS_EMBED_FROM_OV = Transform('cls_embed_from_ov', _cls_embed_forward, lambda y: ())


def zeros(shape) -> Transform:
  """A target with no source tensor (a sourceless rule): zeros, never exported."""
  return Transform(f'zeros{tuple(shape)}', lambda: (jnp.zeros(shape, jnp.float32),),
                   lambda y: ())


# ---------------------------------------------------------------------------------------------
# Key tables. Source keys are the original names; targets are lira_jax param paths.

def _linear(src, dst, repeat=None):
  return [r(src + '.weight', dst + '.kernel', LINEAR, repeat),
          r(src + '.bias', dst + '.bias', repeat=repeat)]


def _norm(src, dst, repeat=None):
  return [r(src + '.weight', dst + '.scale', repeat=repeat),
          r(src + '.bias', dst + '.bias', repeat=repeat)]


def _conv(src, dst, bias=True, repeat=None):
  rules = [r(src + '.weight', dst + '.kernel', CONV, repeat)]
  return rules + ([r(src + '.bias', dst + '.bias', repeat=repeat)] if bias else [])


def pixel_decoder_rules(head, src='panoptic_head.pixel_decoder.', dst='pixel_decoder.'):
  """mmdet MSDeformAttnPixelDecoder -> MSDeformAttnPixelDecoder (encoder layers stacked)."""
  rules = []
  for k in range(head.num_levels):
    rules += (_conv(f'{src}input_convs.{k}.conv', f'{dst}input_convs.{k}.conv')
              + _norm(f'{src}input_convs.{k}.gn', f'{dst}input_convs.{k}.gn'))
  layer, t = src + 'encoder.layers.{i}.', dst + 'encoder.layers.'
  for name in ('sampling_offsets', 'attention_weights', 'value_proj', 'output_proj'):
    rules += _linear(f'{layer}self_attn.{name}', f'{t}self_attn.{name}', 'enc_layers')
  rules += (_linear(layer + 'ffn.layers.0.0', t + 'ffn.fc1', 'enc_layers')
            + _linear(layer + 'ffn.layers.1', t + 'ffn.fc2', 'enc_layers'))
  for k in range(2):
    rules += _norm(f'{layer}norms.{k}', f'{t}norms_{k}', 'enc_layers')
  rules.append(r(src + 'level_encoding.weight', dst + 'level_encoding'))
  for j in range(len(head.in_channels) - head.num_levels):  # FPN levels, lowest resolution first
    rules += (_conv(f'{src}lateral_convs.{j}.conv', f'{dst}lateral_convs.{j}.conv', bias=False)
              + _norm(f'{src}lateral_convs.{j}.gn', f'{dst}lateral_convs.{j}.gn')
              + _conv(f'{src}output_convs.{j}.conv', f'{dst}output_convs.{j}.conv', bias=False)
              + _norm(f'{src}output_convs.{j}.gn', f'{dst}output_convs.{j}.gn'))
  return rules + _conv(src + 'mask_feature', dst + 'mask_feature')


def decoder_rules(head, src='panoptic_head.', dst='decoder.'):
  """mmdet Mask2FormerTransformerDecoder + OMG-Seg heads -> MaskedAttentionDecoder (without
  cls_embed, which no checkpoint holds; see cls_embed_rule)."""
  c = head.feat_channels
  layer, t = src + 'transformer_decoder.layers.{i}.', dst + 'layers.'
  rules = []
  for name in ('cross_attn', 'self_attn'):
    # nn.MultiheadAttention in_proj rows are [W_q; W_k; W_v].
    for leaf, dst_leaf in (('in_proj_weight', 'kernel'), ('in_proj_bias', 'bias')):
      rules.append(r(f'{layer}{name}.attn.{leaf}',
                     tuple(f'{t}{name}.{p}_proj.{dst_leaf}' for p in 'qkv'),
                     split_rows((c, c, c)), 'dec_layers'))
    rules += _linear(f'{layer}{name}.attn.out_proj', f'{t}{name}.out_proj', 'dec_layers')
  rules += (_linear(layer + 'ffn.layers.0.0', t + 'ffn.fc1', 'dec_layers')
            + _linear(layer + 'ffn.layers.1', t + 'ffn.fc2', 'dec_layers'))
  for k in range(3):
    rules += _norm(f'{layer}norms.{k}', f'{t}norms_{k}', 'dec_layers')
  rules += _norm(src + 'transformer_decoder.post_norm', dst + 'post_norm')
  for name in ('query_feat', 'query_embed', 'level_embed', 'mask_tokens', 'pb_embedding'):
    rules.append(r(f'{src}{name}.weight', dst + name))
  for name in ('mask_embed', 'cls_proj', 'iou_embed'):  # torch Sequential: Linear at 0, 2, 4
    for j, i in enumerate((0, 2, 4)):
      rules += _linear(f'{src}{name}.{i}', f'{dst}{name}.layers.{j}')
  rules += (_norm(src + 'mask_pooling_proj.0', dst + 'mask_pooling_norm')
            + _linear(src + 'mask_pooling_proj.1', dst + 'mask_pooling_proj')
            + _linear(src + 'pos_linear', dst + 'pos_linear'))
  return rules


def cls_embed_rule(cfg, dst='decoder.cls_embed') -> keymap.Rule:
  if cfg.source.cls_embed == 'ov_embed':
    return r(OV_KEY, dst, CLS_EMBED_FROM_OV)
  head = cfg.head
  return r((), dst, zeros((head.ov_dim, head.num_things + head.num_stuff + 1, head.ov_protos)))


_BACKBONE_NAMING = {
    'omg_seg': ('backbone.stem.', 'backbone.layer{s}.', 1),
    'open_clip': ('visual.trunk.stem.', 'visual.trunk.stages.{s}.', 0),
}


def backbone_rules(backbone, naming: str, dst='backbone.'):
  """CLIP ConvNeXt trunk (OMG-Seg `backbone.*` or open_clip `visual.trunk.*` names) -> ConvNeXt
  (blocks of stage s stacked, count `stage{s}_blocks`)."""
  stem, stage_fmt, first = _BACKBONE_NAMING[naming]
  rules = _conv(stem + '0', dst + 'stem_conv') + _norm(stem + '1', dst + 'stem_norm')
  for s in range(len(backbone.depths)):
    src, t, n = stage_fmt.format(s=s + first), f'{dst}stages.{s}.', f'stage{s}_blocks'
    if s > 0:
      rules += (_norm(src + 'downsample.0', t + 'downsample_norm')
                + _conv(src + 'downsample.1', t + 'downsample_conv'))
    block, tb = src + 'blocks.{i}.', t + 'blocks.'
    rules += (_conv(block + 'conv_dw', tb + 'conv_dw', repeat=n)
              + _norm(block + 'norm', tb + 'norm', n)
              + _linear(block + 'mlp.fc1', tb + 'fc1', n)
              + _linear(block + 'mlp.fc2', tb + 'fc2', n)
              + [r(block + 'gamma', tb + 'gamma', repeat=n)])
  return rules


def rules(cfg) -> list[keymap.Rule]:
  out = []
  if cfg.source.backbone != 'none':
    out += backbone_rules(cfg.backbone, cfg.source.backbone)
  return out + pixel_decoder_rules(cfg.head) + decoder_rules(cfg.head) + [cls_embed_rule(cfg)]


def counts(cfg) -> dict[str, int]:
  return {'enc_layers': cfg.head.enc_layers, 'dec_layers': cfg.head.dec_layers,
          **{f'stage{s}_blocks': int(d) for s, d in enumerate(cfg.backbone.depths)}}


_TEXT_TOWER = (r'^(token_embedding\.|positional_embedding$|transformer\.|ln_final\.'
               r'|text_projection$|logit_scale$)')
_CLIP_HEAD = r'^(backbone\.head\.|visual\.trunk\.head\.|visual\.head\.)'


def skip(reader) -> dict[str, str]:
  """Deliberately unconverted source keys, by pattern (first match gives the reason)."""
  keys = reader.keys()
  out = {}
  if any(k.startswith('backbone.') for k in keys):
    out[r'^visual\.'] = 'visual.*: superseded by backbone.* of the OMG-Seg checkpoint'
  out[_CLIP_HEAD] = ('CLIP image head backbone.head.* / visual.trunk.head.* / visual.head.*: only '
                     'open-vocabulary inference uses it, which LIRA disables')
  out[_TEXT_TOWER] = ('open_clip text tower token_embedding / positional_embedding / '
                      'transformer.* / ln_final / text_projection / logit_scale: unused, the class '
                      'embeddings come precomputed')
  return out


def params_from_tensors(table, layer_counts, tensors, target_shapes, skip_patterns=None) -> dict:
  """In-memory conversion with the same strict accounting ({key: array} -> {param path: array});
  for loading one sub-module (e.g. the pixel decoder alone with src='' / dst='' tables)."""
  source = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
  instances, report = keymap.plan(table, layer_counts, source, target_shapes, skip_patterns)
  if not report.ok:
    raise cli.ConversionError('\n'.join(report.lines()))
  return keymap.execute(instances, tensors.__getitem__, target_shapes)


# ---------------------------------------------------------------------------------------------
# Sources and config.

class SingleTensor:
  """A file holding exactly one tensor, seen as the source key `name`."""

  def __init__(self, path, name: str):
    inner = open_checkpoint(path)
    keys = inner.keys()
    if len(keys) != 1:
      raise ValueError(f'{path}: expected exactly one tensor, found {len(keys)}')
    info = inner.infos[keys[0]]
    self._inner, self._key = inner, keys[0]
    self.infos = {name: TensorInfo(name, info.dtype, info.shape, info.path, info.start, info.end)}

  def keys(self):
    return list(self.infos)

  def get(self, name):
    return self._inner.get(self._key)


def open_sources(src, clip=None, ov_embed=None):
  readers = [open_checkpoint(src)]
  if clip:
    readers.append(open_checkpoint(clip))
  if ov_embed:
    readers.append(SingleTensor(ov_embed, OV_KEY))
  return MergedReader(readers)


def config_from_golden_json(raw: dict) -> ml_collections.ConfigDict:
  """A golden head set's config.json (../shared/golden/README.md) -> an omg_seg config. Those sets
  hold no backbone, so the backbone depths are zeros (a model from it has no backbone)."""
  return omg_seg_config.omg_seg_config(
      dims=raw['in_channels'], depths=(0,) * len(raw['in_channels']), image_size=raw['image'],
      feat_channels=raw['C'], num_queries=raw['num_queries'], gn_groups=raw['gn_groups'],
      enc_layers=raw['enc_layers'], enc_heads=raw['enc_heads'], enc_points=raw['enc_points'],
      enc_ffn=raw['enc_ffn'], dec_layers=raw['dec_layers'], dec_heads=raw['dec_heads'],
      dec_ffn=raw['dec_ffn'], num_things=raw['things'], num_stuff=raw['stuff'],
      ov_dim=raw['ov_dim'], ov_protos=raw['ov_protos'],
      num_levels=raw['num_transformer_feat_level'], logit_scale_log=raw['logit_scale_log'],
      pixel_shuffle_down_ratio=raw['pixel_shuffle_down_ratio'])


def _base_config(src: pathlib.Path, override, log):
  if override is not None:
    return ml_collections.ConfigDict(override.to_dict())
  beside = (src if src.is_dir() else src.parent) / 'config.json'
  if beside.is_file():
    raw = json.loads(beside.read_text())
    if {'C', 'in_channels', 'num_queries'} <= set(raw):
      log(f'config: {beside} (golden head set)')
      return config_from_golden_json(raw)
  log('config: configs/omg_seg.py (real LIRA settings; pass --config to change)')
  return omg_seg_config.get_config()


def resolve_config(src: pathlib.Path, reader, override, log=print):
  """The model config plus `with_backbone` and `source` (which key families feed it)."""
  cfg = _base_config(pathlib.Path(src), override, log)
  keys = reader.keys()
  if any(k.startswith('backbone.') for k in keys):
    backbone = 'omg_seg'
  elif any(k.startswith('visual.trunk.') for k in keys):
    backbone = 'open_clip'
  else:
    backbone = 'none'
  cfg.with_backbone = backbone != 'none'
  cls_embed = 'ov_embed' if OV_KEY in reader.infos else 'zeros'
  if cls_embed == 'ov_embed':  # P prototypes per class is a property of that file
    cfg.head.ov_protos = int(reader.infos[OV_KEY].shape[1])
  cfg.source = ml_collections.ConfigDict(dict(backbone=backbone, cls_embed=cls_embed))
  log({'omg_seg': 'backbone: backbone.* of the OMG-Seg checkpoint',
       'open_clip': 'backbone: visual.trunk.* of the CLIP checkpoint',
       'none': 'backbone: none in the sources -> head-only model (fed with backbone features)'
       }[backbone])
  log('decoder.cls_embed: not in any checkpoint (non-persistent buffer); ' +
      ('set from --ov-embed with zero background prototypes appended' if cls_embed == 'ov_embed'
       else 'set to zeros (pass --ov-embed for the class prototypes)'))
  return cfg


def target(cfg):
  from flax import nnx
  from lira_jax import param_io
  from lira_jax.models.omg_seg import OMGSeg
  return param_io.abstract_params(lambda: OMGSeg(cfg, rngs=nnx.Rngs(0)))


def verify(params, cfg, directory: pathlib.Path):
  from convert import omg_seg_verify
  return omg_seg_verify.golden_errors(params, cfg, directory)


# Golden README (OMG-Seg): continuous arrays 2e-5, mask logits 5e-5, class logits 2e-4 (scaled
# x100), booleans exact. The deformable-encoder memories get 5e-5: on session 9's CPU one element,
# at the corner of the coarsest map (value -1.27; mean error 5.8e-7), differed by 2.4e-5 (under
# 2e-5 on earlier machines); the deformable sampling points there fall on the map border.
TOLERANCES = {r'mask_pred': 5e-5, r'cls_pred': 2e-4, r'multi_scale_memory': 5e-5,
              r'(attn_mask|attention_mask)': 0.0, r'.': 2e-5}

FAMILY = cli.Family(
    name='omg_seg', resolve_config=resolve_config, rules=rules, counts=counts, target=target,
    verify=verify, skip=skip, open_sources=open_sources, tolerances=TOLERANCES,
    extra_sources={'clip': 'open_clip convnext_large_d_320 checkpoint (visual.* keys)',
                   'ov-embed': 'OV class-embedding file: one tensor f32[K, P, D]'})

if __name__ == '__main__':
  sys.exit(cli.main(FAMILY))
