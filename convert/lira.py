"""LIRA checkpoints (the `.pth` files released with echo840/LIRA) <-> lira_jax params.

  python -m convert.lira --lira LIRA.pth|model.safetensors --verify DIR [--out OUT]
  python -m convert.lira --lira LIRA-2B.pth --check --config configs/lira_2b.py

--lira is this family's primary source: the shared CLI's --src (convert/cli.py), under either
name. Every other flag is the shared one (--out, --verify, --check, --config, --export, ...).

Converted now: the projector part of a LIRA file,
  projector.model.*          visual projector + SEFE cross attention  -> projector.*
  projector_text2vision.*    [SEG] -> OMG-Seg query projector         -> text2vision.*
at the param paths they have inside the full LIRA model. The file's LLM entries (`llm.*`: LoRA
A/B, the resized tok_embeddings and output) are skipped by name and reported. The full
conversion adds the InternVL2 / OMG-Seg / CLIP sources (merged into one reader by
`open_sources`) and their key tables (convert.internvl2, convert.omg_seg) to `rules`.

Config: --config (a LIRA config, configs/lira_*.py), else a golden-style config.json beside the
file (../shared/golden/README.md, lira_projector_tiny), else an error.
"""
from __future__ import annotations

import json
import pathlib
import sys

import ml_collections

from convert import cli, keymap
from convert.keymap import LINEAR, r, split_rows
from convert.pth_io import open_checkpoint

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


def rules(cfg) -> list[keymap.Rule]:
  return projector_rules(cfg) + text2vision_rules(cfg)


def counts(cfg) -> dict[str, int]:
  del cfg  # no stacked layers in the projector part
  return {}


def skip(reader) -> dict[str, str]:
  del reader
  return {r'^llm\.': 'llm.* (LoRA A/B, resized tok_embeddings / output): not part of the '
                     'projector-only conversion'}


# ---------------------------------------------------------------------------------------------
# Sources and config.

def open_sources(src):
  """The LIRA file (.pth read weights-only, or safetensors) as the family's reader."""
  return open_checkpoint(src)


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


def resolve_config(src: pathlib.Path, reader, override, log=print):
  del reader
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
  return param_io.abstract_params(lambda: LiraProjectors(cfg.model, rngs=nnx.Rngs(0)))


def verify(params, cfg, directory: pathlib.Path):
  from convert import lira_verify
  return lira_verify.golden_errors(params, cfg, directory)


# Golden README: LIRA arrays within 1e-5 of the original for an independent float32 port.
TOLERANCES = {r'.': 1e-5}

FAMILY = cli.Family(name='lira', resolve_config=resolve_config, rules=rules, counts=counts,
                    target=target, verify=verify, skip=skip, open_sources=open_sources,
                    tolerances=TOLERANCES, src_flags=('--lira', '--src'))


if __name__ == '__main__':
  sys.exit(cli.main(FAMILY))
