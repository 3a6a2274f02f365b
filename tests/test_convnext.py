"""ConvNeXt pixel encoder vs transformers' ConvNextModel (same stem / downsample / block layout:
dwconv 7x7 -> LayerNorm eps 1e-6 -> Linear -> erf GELU -> Linear -> layer scale -> residual), and
the real-size parameter tree vs the open_clip convnext_large_d_320 key manifest."""
import json
import os

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import lira_jax  # noqa: F401
from configs.omg_seg import get_config
from lira_jax.models.convnext import ConvNeXt

DEPTHS = (1, 1, 2, 1)


def _flat_params(model):
  return {'.'.join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _randomise(model: torch.nn.Module, gen: torch.Generator):
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'layer_scale' in name:
        p.copy_(torch.rand(p.shape, generator=gen) * 0.9 + 0.1)
      elif p.ndim == 1 and 'norm' in name and name.endswith('weight'):
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
      elif p.ndim == 1:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
      else:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in))


def _hf_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
  """transformers ConvNext keys -> our flat param paths (blocks stacked on a leading axis)."""
  conv = lambda t: t.numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
  lin = lambda t: t.numpy().T
  vec = lambda t: t.numpy()
  out = {
      'stem_conv.kernel': conv(sd['embeddings.patch_embeddings.weight']),
      'stem_conv.bias': vec(sd['embeddings.patch_embeddings.bias']),
      'stem_norm.scale': vec(sd['embeddings.layernorm.weight']),
      'stem_norm.bias': vec(sd['embeddings.layernorm.bias']),
  }
  block_map = {'dwconv.weight': ('conv_dw.kernel', conv), 'dwconv.bias': ('conv_dw.bias', vec),
               'layernorm.weight': ('norm.scale', vec), 'layernorm.bias': ('norm.bias', vec),
               'pwconv1.weight': ('fc1.kernel', lin), 'pwconv1.bias': ('fc1.bias', vec),
               'pwconv2.weight': ('fc2.kernel', lin), 'pwconv2.bias': ('fc2.bias', vec),
               'layer_scale_parameter': ('gamma', vec)}
  for i, depth in enumerate(DEPTHS):
    pre = f'encoder.stages.{i}'
    if i > 0:
      out[f'stages.{i}.downsample_norm.scale'] = vec(sd[f'{pre}.downsampling_layer.0.weight'])
      out[f'stages.{i}.downsample_norm.bias'] = vec(sd[f'{pre}.downsampling_layer.0.bias'])
      out[f'stages.{i}.downsample_conv.kernel'] = conv(sd[f'{pre}.downsampling_layer.1.weight'])
      out[f'stages.{i}.downsample_conv.bias'] = vec(sd[f'{pre}.downsampling_layer.1.bias'])
    for src, (dst, fn) in block_map.items():
      out[f'stages.{i}.blocks.{dst}'] = np.stack(
          [fn(sd[f'{pre}.layers.{j}.{src}']) for j in range(depth)])
  return out


def test_matches_transformers_convnext():
  from transformers import ConvNextConfig, ConvNextModel
  cfg = get_config('tiny').backbone
  assert tuple(cfg.depths) == DEPTHS
  hf_cfg = ConvNextConfig(num_channels=3, patch_size=cfg.stem_patch, hidden_sizes=list(cfg.dims),
                          depths=list(cfg.depths), hidden_act='gelu', layer_scale_init_value=1.0)
  gen = torch.Generator().manual_seed(0)
  ref = ConvNextModel(hf_cfg).eval()
  _randomise(ref, gen)
  pixels = torch.randn(2, 3, 96, 64, generator=gen)
  with torch.no_grad():
    out = ref(pixels, output_hidden_states=True)
  # hidden_states = (stem output, stage 1, ..., stage 4).
  assert len(out.hidden_states) == 5
  assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
  expected = [h.numpy().transpose(0, 2, 3, 1) for h in out.hidden_states[1:]]

  # Abstract build (eager random init is slow on CPU); every parameter is then loaded.
  model = nnx.eval_shape(lambda: ConvNeXt(cfg, rngs=nnx.Rngs(0)))
  params = _flat_params(model)
  weights = _hf_to_ours(ref.state_dict())
  assert set(weights) == set(params)
  for path, var in params.items():
    assert weights[path].shape == var.shape, path
    var.value = jnp.asarray(weights[path])

  feats = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1)))
  assert len(feats) == 4
  for got, want in zip(feats, expected):
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


def _open_clip_to_ours(key: str) -> tuple[str, int | None]:
  """open_clip `visual.*` key -> (our path, index on the stacked block axis or None)."""
  parts = key.split('.')
  leaf = {'weight': 'kernel', 'bias': 'bias', 'gamma': 'gamma'}
  if parts[:2] == ['visual', 'head']:  # visual.head.mlp.fc{1,2}.*
    return f'head_{parts[3]}.{leaf[parts[4]]}', None
  assert parts[:2] == ['visual', 'trunk'], key
  rest = parts[2:]
  norm_leaf = {'weight': 'scale', 'bias': 'bias'}
  if rest[0] == 'stem':
    if rest[1] == '0':
      return f'stem_conv.{leaf[rest[2]]}', None
    return f'stem_norm.{norm_leaf[rest[2]]}', None
  if rest[0] == 'head':  # trunk.head.norm.*
    return f'head_norm.{norm_leaf[rest[2]]}', None
  stage = f'stages.{rest[1]}'
  if rest[2] == 'downsample':
    if rest[3] == '0':
      return f'{stage}.downsample_norm.{norm_leaf[rest[4]]}', None
    return f'{stage}.downsample_conv.{leaf[rest[4]]}', None
  block, module = int(rest[3]), rest[4:]
  if module == ['gamma']:
    return f'{stage}.blocks.gamma', block
  if module[0] == 'mlp':
    module = module[1:]
  name = module[0]
  assert name in ('conv_dw', 'norm', 'fc1', 'fc2'), key
  return f'{stage}.blocks.{name}.{(norm_leaf if name == "norm" else leaf)[module[1]]}', block


def test_real_size_tree_matches_open_clip_manifest(shared_dir):
  with open(os.path.join(shared_dir, 'golden/manifests/clip_convnext_large_d_320.json')) as f:
    tensors = json.load(f)['tensors']
  model = nnx.eval_shape(lambda: ConvNeXt(get_config().backbone, with_clip_head=True,
                                          rngs=nnx.Rngs(0)))
  params = {k: v.shape for k, v in _flat_params(model).items()}
  seen = {}
  for key, info in tensors.items():
    if not key.startswith('visual.'):
      continue
    path, block = _open_clip_to_ours(key)
    shape = tuple(info['shape'])
    if len(shape) == 4:
      shape = (shape[2], shape[3], shape[1], shape[0])
    elif len(shape) == 2:
      shape = shape[::-1]
    ours = params[path]
    if block is not None:
      seen.setdefault(path, set()).add(block)
      ours = ours[1:]
    else:
      seen[path] = {None}
    assert ours == shape, (key, path, ours, shape)
  assert set(seen) == set(params)
  for path, blocks in seen.items():
    if blocks != {None}:
      assert blocks == set(range(params[path][0])), path


def test_default_has_no_clip_head():
  model = nnx.eval_shape(lambda: ConvNeXt(get_config('tiny').backbone, rngs=nnx.Rngs(0)))
  assert not any(p.startswith('head_') for p in _flat_params(model))
