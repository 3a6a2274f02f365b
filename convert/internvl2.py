"""InternVL2 (InternViT + mlp1 + InternLM2 or Qwen2) original checkpoints <-> lira_jax params.

  python -m convert.internvl2 --src DIR --out OUT [--verify DIR] [--atol 1e-4]
  python -m convert.internvl2 --src DIR --check [--config configs/internvl2_8b.py]

SRC is an original InternVL2 directory (config.json + *.safetensors, sharded or not). Every size
is read from its config.json (or from --config).
"""
from __future__ import annotations

import json
import pathlib
import sys

import ml_collections
import numpy as np

from configs import common as config_lib
from convert import cli, keymap
from convert.keymap import CONV, IDENTITY, LINEAR, Transform, r


# ---------------------------------------------------------------------------------------------
# Named transforms specific to this family.

def internlm2_wqkv(num_heads: int, num_kv_heads: int, head_dim: int) -> Transform:
  """InternLM2 fused `wqkv` f32[(NH + 2 KV) hd, D] -> wq [D, NH hd], wk [D, KV hd], wv [D, KV hd].

  Rows are grouped per KV head: group g = [q heads gG..gG+G-1, k head g, v head g], hd rows each
  (G = NH / KV). A naive [q | k | v] row split would scramble heads.
  """
  g = num_heads // num_kv_heads

  def forward(w):
    d = w.shape[-1]
    grouped = w.reshape(num_kv_heads, g + 2, head_dim, d)
    q = grouped[:, :g].reshape(num_heads * head_dim, d)
    k = grouped[:, g].reshape(num_kv_heads * head_dim, d)
    v = grouped[:, g + 1].reshape(num_kv_heads * head_dim, d)
    return q.T, k.T, v.T

  def backward(q, k, v):
    d = q.shape[0]
    parts = (q.T.reshape(num_kv_heads, g, head_dim, d), k.T.reshape(num_kv_heads, 1, head_dim, d),
             v.T.reshape(num_kv_heads, 1, head_dim, d))
    return (np.concatenate(parts, axis=1).reshape((num_heads + 2 * num_kv_heads) * head_dim, d),)

  return Transform(f'internlm2_wqkv(nh={num_heads},kv={num_kv_heads},hd={head_dim})',
                   forward, backward)


# ---------------------------------------------------------------------------------------------
# Key tables. Source keys are the original InternVL2 names; targets are lira_jax param paths.

def vision_rules() -> list[keymap.Rule]:
  v, t = 'vision_model.', 'vision.vit.'
  layer = 'vision_model.encoder.layers.{i}.'
  rules = [
      r(v + 'embeddings.class_embedding', t + 'cls_token'),
      r(v + 'embeddings.position_embedding', t + 'pos_embed'),
      r(v + 'embeddings.patch_embedding.weight', t + 'patch_embed.kernel', CONV),
      r(v + 'embeddings.patch_embedding.bias', t + 'patch_embed.bias'),
  ]
  per_layer = [('norm1.weight', 'norm1.scale', IDENTITY), ('norm1.bias', 'norm1.bias', IDENTITY),
               ('attn.qkv.weight', 'qkv.kernel', LINEAR), ('attn.qkv.bias', 'qkv.bias', IDENTITY),
               ('attn.proj.weight', 'proj.kernel', LINEAR), ('attn.proj.bias', 'proj.bias', IDENTITY),
               ('ls1', 'ls1', IDENTITY), ('ls2', 'ls2', IDENTITY),
               ('norm2.weight', 'norm2.scale', IDENTITY), ('norm2.bias', 'norm2.bias', IDENTITY),
               ('mlp.fc1.weight', 'fc1.kernel', LINEAR), ('mlp.fc1.bias', 'fc1.bias', IDENTITY),
               ('mlp.fc2.weight', 'fc2.kernel', LINEAR), ('mlp.fc2.bias', 'fc2.bias', IDENTITY)]
  rules += [r(layer + s, t + 'layers.' + d, tf, repeat='vit_layers') for s, d, tf in per_layer]
  rules += [r('mlp1.0.weight', 'vision.mlp1.norm.scale'), r('mlp1.0.bias', 'vision.mlp1.norm.bias'),
            r('mlp1.1.weight', 'vision.mlp1.fc1.kernel', LINEAR),
            r('mlp1.1.bias', 'vision.mlp1.fc1.bias'),
            r('mlp1.3.weight', 'vision.mlp1.fc2.kernel', LINEAR),
            r('mlp1.3.bias', 'vision.mlp1.fc2.bias')]
  return rules


def internlm2_rules(llm: ml_collections.ConfigDict, prefix='language_model.') -> list[keymap.Rule]:
  """InternLM2 naming (`model.tok_embeddings`, fused `attention.wqkv`, `output`)."""
  layer, t = 'model.layers.{i}.', 'llm.layers.'
  rules = [
      r('model.tok_embeddings.weight', 'llm.embed.embedding'),
      r('model.norm.weight', 'llm.norm.scale'),
      r(layer + 'attention.wqkv.weight', (t + 'wq.kernel', t + 'wk.kernel', t + 'wv.kernel'),
        internlm2_wqkv(llm.num_heads, llm.num_kv_heads, llm.head_dim), repeat='llm_layers'),
      r(layer + 'attention.wo.weight', t + 'wo.kernel', LINEAR, repeat='llm_layers'),
      r(layer + 'feed_forward.w1.weight', t + 'w1.kernel', LINEAR, repeat='llm_layers'),
      r(layer + 'feed_forward.w3.weight', t + 'w3.kernel', LINEAR, repeat='llm_layers'),
      r(layer + 'feed_forward.w2.weight', t + 'w2.kernel', LINEAR, repeat='llm_layers'),
      r(layer + 'attention_norm.weight', t + 'attention_norm.scale', repeat='llm_layers'),
      r(layer + 'ffn_norm.weight', t + 'ffn_norm.scale', repeat='llm_layers'),
  ]
  if not llm.tie_embeddings:
    rules.append(r('output.weight', 'llm.lm_head.kernel', LINEAR))
  return keymap.prefixed(prefix, rules)


def qwen2_rules(llm: ml_collections.ConfigDict, prefix='language_model.') -> list[keymap.Rule]:
  """transformers Qwen2 naming (`model.embed_tokens`, q/k/v/o_proj with q/k/v bias, `lm_head`)."""
  layer, t = 'model.layers.{i}.', 'llm.layers.'
  rules = [r('model.embed_tokens.weight', 'llm.embed.embedding'),
           r('model.norm.weight', 'llm.norm.scale')]
  for src, dst in (('self_attn.q_proj', 'wq'), ('self_attn.k_proj', 'wk'),
                   ('self_attn.v_proj', 'wv'), ('self_attn.o_proj', 'wo'),
                   ('mlp.gate_proj', 'w1'), ('mlp.up_proj', 'w3'), ('mlp.down_proj', 'w2')):
    rules.append(r(layer + src + '.weight', t + dst + '.kernel', LINEAR, repeat='llm_layers'))
    if llm.qkv_bias and dst in ('wq', 'wk', 'wv'):
      rules.append(r(layer + src + '.bias', t + dst + '.bias', repeat='llm_layers'))
  rules += [r(layer + 'input_layernorm.weight', t + 'attention_norm.scale', repeat='llm_layers'),
            r(layer + 'post_attention_layernorm.weight', t + 'ffn_norm.scale',
              repeat='llm_layers')]
  if not llm.tie_embeddings:
    rules.append(r('lm_head.weight', 'llm.lm_head.kernel', LINEAR))
  return keymap.prefixed(prefix, rules)


def llm_rules(llm, prefix='language_model.'):
  return (internlm2_rules if llm.family == 'internlm2' else qwen2_rules)(llm, prefix)


def rules(cfg) -> list[keymap.Rule]:
  return vision_rules() + llm_rules(cfg.model.llm)


def counts(cfg) -> dict[str, int]:
  return {'vit_layers': cfg.model.vision.num_layers, 'llm_layers': cfg.model.llm.num_layers}


# ---------------------------------------------------------------------------------------------
# Config resolution from an original config.json.

_FAMILIES = {'InternLM2ForCausalLM': 'internlm2', 'Qwen2ForCausalLM': 'qwen2'}
_DEFAULT_IMG_CONTEXT = {'internlm2': 92546, 'qwen2': 151648}


def _image_context_id(src: pathlib.Path, family: str) -> int:
  """<IMG_CONTEXT> id by vocabulary lookup in the checkpoint's token files, else the release id."""
  for name in ('special_tokens.json', 'added_tokens.json'):
    f = src / name
    if f.is_file():
      table = json.loads(f.read_text())
      if '<IMG_CONTEXT>' in table:
        return int(table['<IMG_CONTEXT>'])
  f = src / 'tokenizer_config.json'
  if f.is_file():
    for idx, tok in json.loads(f.read_text()).get('added_tokens_decoder', {}).items():
      if tok.get('content') == '<IMG_CONTEXT>':
        return int(idx)
  return _DEFAULT_IMG_CONTEXT[family]


def config_from_json(src: pathlib.Path, keys=()) -> ml_collections.ConfigDict:
  """Builds the lira_jax config from an original InternVLChatConfig dict."""
  raw = json.loads((src / 'config.json').read_text())
  if raw.get('model_type') != 'internvl_chat':
    raise ValueError(f'{src}/config.json: model_type {raw.get("model_type")!r} is not '
                     'internvl_chat')
  vc, lc = raw['vision_config'], raw['llm_config']
  if vc.get('qk_normalization') or vc.get('norm_type', 'layer_norm') != 'layer_norm':
    raise ValueError('only InternViT-300M style encoders (layer_norm, no qk-norm) are supported')
  arch = (lc.get('architectures') or [''])[0]
  if arch not in _FAMILIES:
    raise ValueError(f'unsupported LLM architecture {arch!r}; expected one of {list(_FAMILIES)}')
  family = _FAMILIES[arch]
  if family == 'internlm2' and lc.get('bias', False):
    raise ValueError('InternLM2 with bias=True is not supported (InternVL2 uses bias=False)')
  image_size = raw.get('force_image_size') or vc['image_size']
  rope = lc.get('rope_scaling')
  if rope and rope.get('type', rope.get('rope_type')) != 'dynamic':
    raise ValueError(f'unsupported rope_scaling {rope}')
  tie = bool(lc.get('tie_word_embeddings', False))
  head_key = 'language_model.lm_head.weight' if family == 'qwen2' else 'language_model.output.weight'
  if keys and head_key not in keys:
    tie = True  # released files of tied models omit the head; it is the embedding
  llm = config_lib.llm_config(
      family=family, vocab_size=lc['vocab_size'], hidden_size=lc['hidden_size'],
      num_layers=lc['num_hidden_layers'], num_heads=lc['num_attention_heads'],
      num_kv_heads=lc.get('num_key_value_heads', lc['num_attention_heads']),
      head_dim=lc.get('head_dim'), mlp_dim=lc['intermediate_size'], norm_eps=lc['rms_norm_eps'],
      rope_theta=lc.get('rope_theta', 10000.0),
      rope_scaling=({'type': 'dynamic', 'factor': float(rope['factor'])} if rope else None),
      max_position_embeddings=lc['max_position_embeddings'], tie_embeddings=tie)
  return config_lib.internvl_config(
      vision=config_lib.vision_config(
          hidden_size=vc['hidden_size'], num_layers=vc['num_hidden_layers'],
          num_heads=vc['num_attention_heads'], mlp_dim=vc['intermediate_size'],
          patch_size=vc['patch_size'], image_size=image_size, norm_eps=vc['layer_norm_eps'],
          qkv_bias=vc.get('qkv_bias', True), num_channels=vc.get('num_channels', 3)),
      projector=config_lib.projector_config(
          downsample_ratio=raw.get('downsample_ratio', 0.5), ps_version=raw.get('ps_version', 'v1'),
          select_layer=raw.get('select_layer', -1)),
      llm=llm, template=raw.get('template', 'internlm2-chat'),
      image_context_id=_image_context_id(src, family),
      tiling=ml_collections.ConfigDict(dict(
          image_size=image_size, min_tiles=raw.get('min_dynamic_patch', 1),
          max_tiles=raw.get('max_dynamic_patch', 12), use_thumbnail=raw.get('use_thumbnail', True))),
      dtype='float32', param_dtype='float32')


def resolve_config(src: pathlib.Path, reader, override):
  if override is not None:
    return override
  directory = src if src.is_dir() else src.parent
  if not (directory / 'config.json').is_file():
    raise FileNotFoundError(f'{directory} has no config.json; pass --config configs/FILE.py[:arg]')
  return config_from_json(directory, keys=set(reader.keys()))


def target(cfg):
  from lira_jax.models import internvl
  from lira_jax import param_io
  return param_io.abstract_params(lambda: internvl.InternVL(cfg.model, rngs=_rngs()))


def _rngs():
  from flax import nnx
  return nnx.Rngs(0)


def verify(params, cfg, directory: pathlib.Path):
  from convert import internvl2_verify
  return internvl2_verify.golden_errors(params, cfg, directory)


FAMILY = cli.Family(name='internvl2', resolve_config=resolve_config, rules=rules, counts=counts,
                    target=target, verify=verify)

if __name__ == '__main__':
  sys.exit(cli.main(FAMILY))
