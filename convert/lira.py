"""LIRA checkpoints (the `.pth` files released with echo840/LIRA) <-> lira_jax params.

  python -m convert.lira --internvl InternVL2-2B/ --omg-seg omg_seg_convl.pth [--clip CLIP.bin]
      [--ov-embed OV.pth] --lira LIRA-2B.pth --config configs/lira_2b.py --out OUT [--merge-lora]
  python -m convert.lira --lira LIRA.pth|model.safetensors --verify DIR [--out OUT]
  python -m convert.lira --lira LIRA-2B.pth --check --config configs/lira_2b.py

--lira is this family's primary source: the shared CLI's --src (convert/cli.py), under either
name. Every other flag is the shared one (--out, --verify, --check, --config, --export, ...).

Full model (--internvl given): the InternVL2 base (convert.internvl2 tables) with its embedding
and LM head superseded by the LIRA file's trained full matrices, the OMG-Seg head and backbone
(convert.omg_seg tables), and from the LIRA file
  llm.base_model.model.*     LoRA A/B of wqkv/wo/w1/w2/w3/output, tok_embeddings, output.base_layer
  projector.model.*          visual projector + SEFE cross attention  -> projector.*
  projector_text2vision.*    [SEG] -> OMG-Seg query projector         -> text2vision.*
The fused InternLM2 `wqkv` adapter becomes three adapters on wq/wk/wv with A copied and B split
by KV group (exact: B·A split by rows). Rows for tokens the config adds beyond the file ([REJ])
are appended: embedding and LM-head rows by the mean of the old rows, LoRA B columns as zeros (the
rule the released eval scripts use when padding). --merge-lora folds W + (alpha/r) A B.

Projector only (no --internvl): the projector part alone; the file's `llm.*` entries are skipped
by name and reported.

Config: --config (a LIRA config, configs/lira_*.py), else a golden-style config.json beside the
file (../shared/golden/README.md, lira_projector_tiny), else an error.
"""
from __future__ import annotations

import json
import pathlib
import sys

import ml_collections

import jax
import jax.numpy as jnp
import numpy as np

from convert import cli, internvl2, keymap, omg_seg
from convert import omg_seg as omg_seg_module
from convert.keymap import LINEAR, Transform, r, split_rows
from convert.pth_io import MergedReader, open_checkpoint
from convert.safetensors_io import CheckpointReader

PROJECTOR_SRC, PROJECTOR_DST = 'projector.model.', 'projector.'
TEXT2VISION_SRC, TEXT2VISION_DST = 'projector_text2vision.model', 'text2vision'


# ---------------------------------------------------------------------------------------------
# Key tables. Source keys are the released LIRA names; targets are lira_jax param paths.

def _linear(src, dst):
  return [r(src + '.weight', dst + '.kernel', LINEAR), r(src + '.bias', dst + '.bias')]


def _norm(src, dst):
  return [r(src + '.weight', dst + '.scale'), r(src + '.bias', dst + '.bias')]


def _sequential(src, dst, num_linears):
  """torch Sequential(Linear, GELU, Linear, ...): Linear k at index 2k -> GeluMLP fc{2k}."""
  return [x for k in range(num_linears) for x in _linear(f'{src}.{2 * k}', f'{dst}.fc{2 * k}')]


def projector_rules(cfg, src=PROJECTOR_SRC, dst=PROJECTOR_DST) -> list[keymap.Rule]:
  """`Naive_Proj` -> SEFE (cfg = the LIRA config; its model.sefe decides cross_beforellm)."""
  sefe, h = cfg.model.sefe, cfg.model.llm.hidden_size
  rules = (_linear(src + 'query_proj', dst + 'query_proj')
           + _sequential(src + 'model', dst + 'model', sefe.projector_depth)
           + _sequential(src + 'model_feat', dst + 'model_feat', sefe.projector_depth)
           + [r(src + 'seperate_embed.weight', dst + 'seperate_embed'),
              r(src + 'seperate_embed_internvl.weight', dst + 'seperate_embed_internvl')])
  if sefe.add_cross:
    attn, t = src + 'cross_beforellm.multihead_attn.', dst + 'cross_beforellm.'
    # nn.MultiheadAttention in_proj rows are [W_q; W_k; W_v].
    rules += [r(attn + 'in_proj_weight', tuple(f'{t}{p}_proj.kernel' for p in 'qkv'),
                split_rows((h, h, h))),
              r(attn + 'in_proj_bias', tuple(f'{t}{p}_proj.bias' for p in 'qkv'),
                split_rows((h, h, h)))]
    rules += (_linear(attn + 'out_proj', t + 'out_proj')
              + _norm(src + 'cross_beforellm.norm1', t + 'norm1')
              + _norm(src + 'cross_beforellm.norm2', t + 'norm2'))
  return rules


def text2vision_rules(cfg, src=TEXT2VISION_SRC, dst=TEXT2VISION_DST) -> list[keymap.Rule]:
  """xtuner ProjectorModel (depth 2) -> TextToVision."""
  del cfg  # fixed depth
  return _sequential(src, dst, 2)


def append_rows(new_rows: int, fill: str, transpose: bool) -> Transform:
  """f32[V0, D] -> [V0 + new_rows, D] (transposed to [D, V] when `transpose`): rows for tokens the
  config adds beyond the file, as the mean of the old rows ('mean') or zeros ('zeros')."""

  def forward(w):
    xp = jnp if isinstance(w, jax.Array) else np
    extra = (xp.broadcast_to(w.mean(0, keepdims=True), (new_rows, w.shape[1])) if fill == 'mean'
             else xp.zeros((new_rows, w.shape[1]), w.dtype))
    out = xp.concatenate([w, extra.astype(w.dtype)], axis=0)
    return (out.T if transpose else out,)

  def backward(y):
    y = y.T if transpose else y
    return (y[:y.shape[0] - new_rows],)

  return Transform(f'append_rows({new_rows},{fill},{"T" if transpose else ""})', forward, backward)


def _copies(n: int) -> Transform:
  """torch lora_A f32[r, in] -> n identical adapters' lora_a [in, r] (a fused adapter split).
  Export needs them identical (adapters trained separately have no fused equivalent)."""

  def backward(*a):
    if any(not np.array_equal(a[0], x) for x in a[1:]):
      raise ValueError('wq/wk/wv LoRA A differ: not expressible as one fused wqkv adapter')
    return (a[0].T,)

  return Transform(f'copy{n}_linear', lambda a: (a.T,) * n, backward)


LIRA_LLM = 'llm.base_model.model.'


def lira_llm_rules(cfg, file_vocab: int) -> list[keymap.Rule]:
  """The LIRA file's LLM part (InternLM2 naming under peft) -> LoRA-wrapped llm.* params."""
  llm = cfg.model.llm
  if llm.family != 'internlm2':
    raise ValueError('released LIRA checkpoints are InternLM2-based; no table for '
                     f'{llm.family!r}')
  new = llm.vocab_size - file_vocab
  if new < 0:
    raise ValueError(f'config vocabulary {llm.vocab_size} is smaller than the file\'s {file_vocab}')
  src, layer, t = LIRA_LLM, LIRA_LLM + 'model.layers.{i}.', 'llm.layers.'
  ab = '.lora_A.default.weight', '.lora_B.default.weight'
  rules = [r(src + 'model.tok_embeddings.weight', 'llm.embed.embedding',
             append_rows(new, 'mean', transpose=False)),
           r(src + 'output.base_layer.weight', 'llm.lm_head.kernel',
             append_rows(new, 'mean', transpose=True))]
  if not cfg.lora.rank:
    return rules
  wqkv = internvl2.internlm2_wqkv(llm.num_heads, llm.num_kv_heads, llm.head_dim)
  rules += [r(layer + 'attention.wqkv' + ab[0], tuple(f'{t}{p}.lora_a' for p in ('wq', 'wk', 'wv')),
              _copies(3), repeat='llm_layers'),
            r(layer + 'attention.wqkv' + ab[1], tuple(f'{t}{p}.lora_b' for p in ('wq', 'wk', 'wv')),
              wqkv, repeat='llm_layers')]
  for name, dst in (('attention.wo', 'wo'), ('feed_forward.w1', 'w1'),
                    ('feed_forward.w3', 'w3'), ('feed_forward.w2', 'w2')):
    rules += [r(layer + name + ab[0], f'{t}{dst}.lora_a', LINEAR, repeat='llm_layers'),
              r(layer + name + ab[1], f'{t}{dst}.lora_b', LINEAR, repeat='llm_layers')]
  return rules + [r(src + 'output' + ab[0], 'llm.lm_head.lora_a', LINEAR),
                  r(src + 'output' + ab[1], 'llm.lm_head.lora_b',
                    append_rows(new, 'zeros', transpose=True))]


def _omg_cfg(cfg):
  """The omg_seg-family view (backbone, head, source) of a LIRA config."""
  return ml_collections.ConfigDict(dict(backbone=cfg.model.omg.backbone, head=cfg.model.omg.head,
                                        source=cfg.conversion.omg_source))


def full_rules(cfg) -> list[keymap.Rule]:
  superseded = ('llm.embed.embedding', 'llm.lm_head.kernel')
  base_llm = [x for x in internvl2.llm_rules(cfg.model.llm) if x.dst[0] not in superseded]
  omg = _omg_cfg(cfg)
  out = internvl2.vision_rules() + base_llm
  if omg.source.backbone != 'none':
    out += omg_seg.backbone_rules(omg.backbone, omg.source.backbone, dst='omg.backbone.')
  out += (omg_seg.pixel_decoder_rules(omg.head, dst='omg.pixel_decoder.')
          + omg_seg.decoder_rules(omg.head, dst='omg.decoder.')
          + [omg_seg.cls_embed_rule(omg, dst='omg.decoder.cls_embed')])
  return (out + lira_llm_rules(cfg, cfg.conversion.file_vocab) + projector_rules(cfg)
          + text2vision_rules(cfg))


def rules(cfg) -> list[keymap.Rule]:
  if cfg.get('conversion', {}).get('mode') == 'full':
    return full_rules(cfg)
  return projector_rules(cfg) + text2vision_rules(cfg)


def counts(cfg) -> dict[str, int]:
  if cfg.get('conversion', {}).get('mode') != 'full':
    return {}  # no stacked layers in the projector part
  return {**internvl2.counts(cfg), **omg_seg.counts(_omg_cfg(cfg))}


def skip(reader) -> dict[str, str]:
  if not any(k.startswith('vision_model.') for k in reader.keys()):
    return {r'^llm\.': 'llm.* (LoRA A/B, resized tok_embeddings / output): not part of the '
                       'projector-only conversion'}
  return {r'^language_model\.(model\.tok_embeddings|output)\.weight$':
              'InternVL2 embedding / LM head: superseded by the LIRA file\'s trained matrices',
          **omg_seg.skip(reader)}


def merge_lora_params(params: dict, cfg):
  """--merge-lora: W <- W + (alpha / r) A B for every adapter; the adapters are dropped and the
  saved config has LoRA off, so the converted model is a plain one."""
  if cfg.get('conversion', {}).get('mode') != 'full' or not cfg.conversion.merge_lora:
    return params, cfg
  scale = cfg.lora.alpha / cfg.lora.rank
  out = {k: v for k, v in params.items() if not k.endswith(('.lora_a', '.lora_b'))}
  for key in params:
    if key.endswith('.lora_a'):
      base = key[:-len('lora_a')]
      delta = np.matmul(params[key].astype(np.float32), params[base + 'lora_b'].astype(np.float32))
      out[base + 'kernel'] = (params[base + 'kernel'].astype(np.float32)
                              + scale * delta).astype(params[base + 'kernel'].dtype)
  cfg.lora.rank, cfg.lora.alpha = 0, 0.0
  cfg.conversion.merge_lora = False
  return out, cfg


# ---------------------------------------------------------------------------------------------
# Sources and config.

def open_sources(src, internvl=None, omg_seg=None, clip=None, ov_embed=None, merge_lora=False):
  """The LIRA file (.pth read weights-only, or safetensors), plus for the full model the
  InternVL2 directory, OMG-Seg checkpoint, CLIP checkpoint and OV file, as one reader."""
  readers = [open_checkpoint(src)]
  if internvl:
    readers.append(CheckpointReader(internvl))
  for path in (omg_seg, clip):
    if path:
      readers.append(open_checkpoint(path))
  if ov_embed:
    readers.append(omg_seg_module.SingleTensor(ov_embed, omg_seg_module.OV_KEY))
  merged = MergedReader(readers)
  merged.merge_lora = bool(merge_lora)
  merged.internvl_dir = pathlib.Path(internvl) if internvl else None
  return merged


_GOLDEN_KEYS = {'llm_hidden_size', 'query_channels', 'clip_feat_channel', 'pixel_shuffle_ratio'}
# Released switches this implementation does not build; a file made with them is refused.
_UNSUPPORTED = dict(prefix=False, add_cross_attn_layer=False, visual_prompt_proj=False,
                    hidden_act='gelu', bias=True)


def config_from_golden_json(raw: dict) -> ml_collections.ConfigDict:
  """A lira_projector_tiny-style config.json -> a config with the model sections the projector
  part reads (model.llm.hidden_size, model.sefe, model.text2vision)."""
  for name, supported in _UNSUPPORTED.items():
    if raw.get(name, supported) != supported:
      raise ValueError(f'config.json: {name}={raw[name]!r} is not supported (only {supported!r})')
  feat = raw['clip_feat_channel'] * raw['pixel_shuffle_ratio'] ** 2
  if raw.get('feat_channels', feat) != feat:
    raise ValueError(f'config.json: feat_channels {raw["feat_channels"]} != clip_feat_channel '
                     f'x pixel_shuffle_ratio^2 = {feat}')
  model = ml_collections.ConfigDict(dict(
      llm=dict(hidden_size=raw['llm_hidden_size']),
      sefe=dict(query_channels=raw['query_channels'], clip_feat_channel=raw['clip_feat_channel'],
                pixel_shuffle_ratio=raw['pixel_shuffle_ratio'],
                projector_depth=raw.get('projector_depth', 2),
                cross_heads=raw.get('cross_head_num', 32), add_cross=bool(raw['add_cross']),
                onlyomg_pretrain=bool(raw.get('onlyomg_pretrain', False)), variant='released'),
      text2vision=dict(out_dim=raw.get('text2vision_out_channels', 2 * raw['query_channels'])),
      dtype='float32', param_dtype='float32'))
  return ml_collections.ConfigDict(dict(model=model))


def _full_config(reader, override, log):
  if override is None or 'omg' not in override.model:
    raise FileNotFoundError('the full LIRA conversion needs --config configs/lira_2b.py '
                            '(or lira_8b.py)[:stage2]')
  cfg = ml_collections.ConfigDict(override.to_dict())
  embed = LIRA_LLM + 'model.tok_embeddings.weight'
  if embed not in reader.infos:
    raise ValueError(f'the LIRA file has no {embed}: is it a stage-2 LIRA checkpoint?')
  omg_view = ml_collections.ConfigDict(dict(backbone=cfg.model.omg.backbone,
                                            head=cfg.model.omg.head))
  omg_view = omg_seg.resolve_config(pathlib.Path('.'), reader, omg_view, log)
  cfg.model.omg.head = omg_view.head
  cfg.conversion = ml_collections.ConfigDict(dict(
      mode='full', merge_lora=bool(getattr(reader, 'merge_lora', False)),
      file_vocab=int(reader.infos[embed].shape[0]), omg_source=omg_view.source.to_dict()))
  added = cfg.model.llm.vocab_size - cfg.conversion.file_vocab
  log(f'vocabulary: {cfg.conversion.file_vocab} rows in the LIRA file, {cfg.model.llm.vocab_size} '
      f'in the config: {added} row(s) appended (embedding and LM head: mean of the old rows; '
      'LoRA B of the head: zeros)')
  return cfg


def resolve_config(src: pathlib.Path, reader, override, log=print):
  if any(k.startswith('vision_model.') for k in reader.keys()):
    return _full_config(reader, override, log)
  if override is not None:
    return override
  beside = (src if src.is_dir() else src.parent) / 'config.json'
  if beside.is_file():
    raw = json.loads(beside.read_text())
    if _GOLDEN_KEYS <= set(raw):
      log(f'config: {beside} (projector set)')
      return config_from_golden_json(raw)
  raise FileNotFoundError(f'no projector config.json beside {src}; pass --config '
                          'configs/lira_2b.py (or lira_8b.py)[:stage1]')


def target(cfg):
  from flax import nnx
  from convert.lira_verify import LiraProjectors
  from lira_jax import param_io
  if cfg.get('conversion', {}).get('mode') != 'full':
    return param_io.abstract_params(lambda: LiraProjectors(cfg.model, rngs=nnx.Rngs(0)))
  from lira_jax.models.lira import LIRA
  from lira_jax.train.step import add_lora

  def build():
    model = LIRA(cfg, rngs=nnx.Rngs(0),
                 with_backbone=cfg.conversion.omg_source.backbone != 'none')
    add_lora(model, cfg, nnx.Rngs(1))
    return model

  return param_io.abstract_params(build)


def verify(params, cfg, directory: pathlib.Path):
  from convert import lira_verify
  return lira_verify.golden_errors(params, cfg, directory)


# Golden README: LIRA arrays within 1e-5 of the original for an independent float32 port.
TOLERANCES = {r'.': 1e-5}

FAMILY = cli.Family(name='lira', resolve_config=resolve_config, rules=rules, counts=counts,
                    target=target, verify=verify, skip=skip, open_sources=open_sources,
                    tolerances=TOLERANCES, src_flags=('--lira', '--src'),
                    finalize=merge_lora_params,
                    extra_sources={'internvl': 'original InternVL2 directory (the base model)',
                                   'omg-seg': 'omg_seg_convl.pth (OMG-Seg head [+ backbone])',
                                   'clip': 'open_clip convnext_large_d_320 checkpoint',
                                   'ov-embed': 'OV class-embedding file f32[K, P, D]'},
                    extra_switches={'merge-lora': 'fold LoRA into the base weights'})


if __name__ == '__main__':
  sys.exit(cli.main(FAMILY))
