"""Shared builders for model configs. Every size lives in the per-model files, not here."""
from __future__ import annotations

import importlib.util
import pathlib
import sys

import ml_collections


def vision_config(*, hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096, patch_size=14,
                  image_size=448, norm_eps=1e-6, qkv_bias=True, num_channels=3):
  """InternViT (InternVL2 `vision_config`). Defaults: InternViT-300M-448px."""
  return ml_collections.ConfigDict(dict(
      hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim,
      patch_size=patch_size, image_size=image_size, norm_eps=norm_eps, qkv_bias=qkv_bias,
      num_channels=num_channels))


def projector_config(*, downsample_ratio=0.5, ps_version='v2', norm_eps=1e-5, select_layer=-1):
  """Pixel shuffle + mlp1 (LayerNorm eps is torch's default 1e-5)."""
  return ml_collections.ConfigDict(dict(downsample_ratio=downsample_ratio, ps_version=ps_version,
                                        norm_eps=norm_eps, select_layer=select_layer))


def llm_config(*, family, vocab_size, hidden_size, num_layers, num_heads, num_kv_heads, mlp_dim,
               head_dim=None, norm_eps, rope_theta, rope_scaling=None, max_position_embeddings,
               tie_embeddings, qkv_bias=None):
  """Decoder-only LLM. family: 'internlm2' (fused grouped wqkv in checkpoints, no bias) or 'qwen2'
  (q/k/v bias). rope_scaling: None or {'type': 'dynamic', 'factor': f} (dynamic NTK)."""
  if family not in ('internlm2', 'qwen2'):
    raise ValueError(f'unknown LLM family {family!r}')
  return ml_collections.ConfigDict(dict(
      family=family, vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
      num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim or hidden_size // num_heads,
      mlp_dim=mlp_dim, norm_eps=norm_eps, rope_theta=float(rope_theta),
      rope_scaling=ml_collections.ConfigDict(rope_scaling) if rope_scaling else None,
      max_position_embeddings=max_position_embeddings, tie_embeddings=tie_embeddings,
      qkv_bias=(family == 'qwen2') if qkv_bias is None else qkv_bias))


def internvl_config(*, vision, projector, llm, template, image_context_id, tiling=None,
                    dtype='float32', param_dtype='float32'):
  """A full InternVL2-style model config (semantic encoder + mlp1 + LLM)."""
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      vision=vision, projector=projector, llm=llm, dtype=dtype, param_dtype=param_dtype,
      remat_policy=None, image_context_id=image_context_id))
  c.model.remat_policy = ml_collections.FieldReference(None, field_type=str)
  c.template = template
  c.tiling = tiling or ml_collections.ConfigDict(dict(
      image_size=vision.image_size, min_tiles=1, max_tiles=12, use_thumbnail=True))
  c.lora = ml_collections.ConfigDict(dict(
      rank=0, alpha=0.0, dropout=0.0, target_pattern=r'llm\.layers\..*'))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c


def tiny_vision_config():
  """The test-size InternViT used by every tiny variant (sizes of ../shared/golden/internvl2_tiny)."""
  return vision_config(hidden_size=64, num_layers=2, num_heads=4, mlp_dim=256, image_size=112)


def internvl2_variant(arg, *, llm, tiny_llm, template, image_context_id, tiny_image_context_id=193):
  """InternViT-300M + mlp1 + `llm` for arg None, or the tiny vision tower + `tiny_llm` for 'tiny'."""
  if arg == 'tiny':
    return internvl_config(vision=tiny_vision_config(), projector=projector_config(),
                           llm=tiny_llm, template=template, image_context_id=tiny_image_context_id)
  if arg not in (None, ''):
    raise ValueError(f'unknown config arg {arg!r} (expected none or "tiny")')
  return internvl_config(vision=vision_config(), projector=projector_config(), llm=llm,
                         template=template, image_context_id=image_context_id)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` by calling its get_config(arg)."""
  path, _, arg = spec.partition(':')
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'config file {path} not found')
  root = str(pathlib.Path(__file__).resolve().parent.parent)
  if root not in sys.path:
    sys.path.insert(0, root)
  spec_ = importlib.util.spec_from_file_location(f'_lira_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(module)
  return module.get_config(arg or None)


def stage_config(spec: str, stage: int) -> ml_collections.ConfigDict:
  """`path[:args]` of a staged config (e.g. configs/tiny_synthetic.py) with `stageN` appended to
  its args."""
  path, _, arg = spec.partition(':')
  return load_config(f'{path}:{",".join(p for p in (arg, f"stage{stage}") if p)}')
