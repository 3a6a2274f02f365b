"""InternViT / pixel shuffle / mlp1 vs transformers, literal torch ops and golden vectors."""
import json
import os

import lira_jax  # noqa: F401
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import InternVLConfig, InternVLVisionConfig, InternVLVisionModel
from transformers.models.internvl.modeling_internvl import (InternVLModel,
                                                      InternVLMultiModalProjector)

from configs import common
from lira_jax.models.intern_vit import InternViT, SemanticEncoder, VisionProjector, pixel_shuffle

HIDDEN, LAYERS, HEADS, MLP, PATCH, IMAGE = 32, 2, 4, 64, 4, 32  # native grid 8x8


# ----------------------------------------------------------------------------- weight loading

def abstract(make):
  """Builds a module without running initialisers (every Param is then set by `assign`)."""
  return nnx.eval_shape(make)


def assign(module: nnx.Module, flat: dict[str, np.ndarray]):
  """Sets every Param of `module` from {'a.b.c': array}; fails on missing, extra or misshaped."""
  params = {'.'.join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}
  missing, extra = sorted(set(params) - set(flat)), sorted(set(flat) - set(params))
  assert not missing and not extra, (missing, extra)
  for name, value in flat.items():
    assert params[name].shape == value.shape, (name, params[name].shape, value.shape)
    params[name].set_value(jnp.asarray(value, jnp.float32))


def linear(name: str, sd, torch_name: str) -> dict[str, np.ndarray]:
  """Our Linear `name` from torch Linear `torch_name` (weight transposed to [in, out])."""
  return {f'{name}.kernel': sd[f'{torch_name}.weight'].T, f'{name}.bias': sd[f'{torch_name}.bias']}


def norm(name: str, sd, torch_name: str) -> dict[str, np.ndarray]:
  return {f'{name}.scale': sd[f'{torch_name}.weight'], f'{name}.bias': sd[f'{torch_name}.bias']}


def vit_params(sd, *, cls, pos, patch, layer_keys, num_layers) -> dict[str, np.ndarray]:
  """Our InternViT params from a torch state dict; layer_keys(i) gives one layer's torch arrays
  as {ours-name: array} (torch layout)."""
  flat = {'cls_token': sd[cls], 'pos_embed': sd[pos],
          'patch_embed.kernel': sd[patch + '.weight'].transpose(2, 3, 1, 0),
          'patch_embed.bias': sd[patch + '.bias']}
  per_layer = [layer_keys(i) for i in range(num_layers)]
  for name in per_layer[0]:
    flat[f'layers.{name}'] = np.stack([layer[name] for layer in per_layer])
  return flat


def torch_layer(sd, prefix, names) -> dict[str, np.ndarray]:
  """One block in our naming; names maps ours -> torch suffix (norms/linears expanded here)."""
  out = {}
  for ours, theirs in names.items():
    if ours.startswith('norm'):
      out.update(norm(ours, sd, prefix + theirs))
    elif ours.startswith('ls'):
      out[ours] = sd[prefix + theirs]
    else:
      out.update(linear(ours, sd, prefix + theirs))
  return out


def randomize(model: torch.nn.Module, seed: int):
  """Non-trivial weights: norms N(1, .2) / N(0, .1), linears N(0, 1/fan_in), layer scale U(.1, 1),
  CLS and position embedding N(0, .5)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      leaf = name.rsplit('.', 1)[-1]
      if leaf.startswith('lambda'):
        p.copy_(0.1 + 0.9 * torch.rand(p.shape, generator=g))
      elif p.ndim == 1 and leaf == 'weight':
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
      elif leaf == 'bias':
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
      elif leaf == 'weight':
        p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(np.prod(p.shape[1:])))
      else:
        p.copy_(0.5 * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------- transformers ViT

@pytest.fixture(scope='module')
def hf_vit():
  cfg = InternVLVisionConfig(
      hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
      intermediate_size=MLP, image_size=IMAGE, patch_size=PATCH, hidden_act='gelu',
      layer_norm_eps=1e-6, norm_type='layer_norm', attention_bias=True, use_qk_norm=False,
      use_mean_pooling=True, use_absolute_position_embeddings=True)
  model = InternVLVisionModel(cfg).eval()
  randomize(model, 0)
  return model


def hf_to_ours(model) -> dict[str, np.ndarray]:
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  names = {'norm1': 'layernorm_before', 'norm2': 'layernorm_after', 'ls1': 'lambda_1',
           'ls2': 'lambda_2', 'proj': 'attention.projection_layer', 'fc1': 'mlp.fc1',
           'fc2': 'mlp.fc2'}

  def layer(i):
    p = f'encoder.layer.{i}.'
    out = torch_layer(sd, p, names)
    qkv = [sd[f'{p}attention.{n}_proj.weight'] for n in 'qkv']
    out['qkv.kernel'] = np.concatenate(qkv).T
    out['qkv.bias'] = np.concatenate([sd[f'{p}attention.{n}_proj.bias'] for n in 'qkv'])
    return out

  return vit_params(sd, cls='embeddings.cls_token', pos='embeddings.position_embeddings',
                    patch='embeddings.patch_embeddings.projection', layer_keys=layer,
                    num_layers=LAYERS)


@pytest.fixture(scope='module')
def our_vit(hf_vit):
  cfg = common.vision_config(hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS, mlp_dim=MLP,
                             patch_size=PATCH, image_size=IMAGE)
  vit = abstract(lambda: InternViT(cfg, rngs=nnx.Rngs(0)))
  assign(vit, hf_to_ours(hf_vit))
  return vit


@pytest.mark.parametrize('size', [(IMAGE, IMAGE), (48, 40), (24, 24)],
                         ids=['native', 'upsized_nonsquare', 'downsized'])
def test_vit_matches_transformers(hf_vit, our_vit, size):
  pixels = np.random.default_rng(1).normal(size=(2, 3, *size)).astype(np.float32)
  with torch.no_grad():
    ref = hf_vit(torch.from_numpy(pixels), output_hidden_states=True)
  forward = nnx.jit(lambda m, x: m(x, return_hidden_states=True))
  last, hidden = forward(our_vit, jnp.asarray(pixels.transpose(0, 2, 3, 1)))
  ref_hidden = np.stack([h.numpy() for h in ref.hidden_states])
  assert hidden.shape == ref_hidden.shape
  err_last = np.abs(np.asarray(last) - ref.last_hidden_state.numpy()).max()
  err_hidden = np.abs(np.asarray(hidden) - ref_hidden).max()
  print(f'{size}: last_hidden max|d| {err_last:.2e}, hidden_states max|d| {err_hidden:.2e}')
  assert err_last <= 1e-4 and err_hidden <= 1e-4


def test_pos_embed_interpolation_is_torch_bicubic(our_vit):
  """Transformers interpolates in the model dtype; check the resize alone against torch in fp32."""
  grid = np.array(our_vit.pos_embed[...])[0, 1:].reshape(IMAGE // PATCH, IMAGE // PATCH, -1)
  for rows, cols in [(12, 10), (6, 6), (5, 9)]:
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(grid).permute(2, 0, 1)[None], size=(rows, cols), mode='bicubic',
        align_corners=False)[0].permute(1, 2, 0).reshape(rows * cols, -1).numpy()
    ours = np.asarray(our_vit.position_embedding(rows, cols))[0, 1:]
    err = np.abs(ours - ref).max()
    print(f'bicubic {rows}x{cols}: max|d| {err:.2e}')
    assert err <= 1e-5
  # jax.image.resize is not an acceptable substitute (its cubic kernel differs).
  jax_resize = jax.image.resize(jnp.asarray(grid), (12, 10, grid.shape[-1]), 'bicubic')
  assert np.abs(np.asarray(our_vit.position_embedding(12, 10))[0, 1:].reshape(12, 10, -1)
                - np.asarray(jax_resize)).max() > 1e-3


# ----------------------------------------------------------------------------- pixel shuffle

def torch_pixel_shuffle(x: torch.Tensor, scale: float, version: str) -> torch.Tensor:
  """The original InternVL view/permute sequence."""
  n, w, h, c = x.size()
  x = x.view(n, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
  x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
  return x if version == 'v1' else x.permute(0, 2, 1, 3).contiguous()


@pytest.mark.parametrize('shape', [(1, 4, 4, 2), (2, 8, 6, 5)])
def test_pixel_shuffle_matches_torch_literal(shape):
  ramp = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
  rand = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  for x in (ramp, rand):
    for version in ('v1', 'v2'):
      ref = torch_pixel_shuffle(torch.from_numpy(x), 0.5, version).numpy()
      np.testing.assert_array_equal(np.asarray(pixel_shuffle(jnp.asarray(x), 0.5, version)), ref)
  v2 = np.asarray(pixel_shuffle(jnp.asarray(ramp), 0.5, 'v2'))
  i, j = 1, 0
  expect = np.concatenate([ramp[0, 2 * i, 2 * j], ramp[0, 2 * i, 2 * j + 1],
                           ramp[0, 2 * i + 1, 2 * j], ramp[0, 2 * i + 1, 2 * j + 1]])
  np.testing.assert_array_equal(v2[0, i, j], expect)
  v1 = np.asarray(pixel_shuffle(jnp.asarray(ramp), 0.5, 'v1'))
  np.testing.assert_array_equal(v1[0, j, i], v2[0, i, j])  # v1 = transposed grid
  assert not np.array_equal(v1[0, 0, 1], v2[0, 0, 1])


def test_pixel_shuffle_and_mlp1_match_transformers():
  llm_hidden = 24
  hf_cfg = InternVLConfig(vision_config=dict(hidden_size=HIDDEN),
                          text_config=dict(model_type='qwen2', hidden_size=llm_hidden),
                          downsample_ratio=0.5, projector_hidden_act='gelu')
  hf_proj = InternVLMultiModalProjector(hf_cfg).eval()
  randomize(hf_proj, 2)
  sd = {k: v.detach().numpy() for k, v in hf_proj.state_dict().items()}
  proj = abstract(lambda: VisionProjector(4 * HIDDEN, llm_hidden, norm_eps=1e-5, rngs=nnx.Rngs(0)))
  assign(proj, {**norm('norm', sd, 'layer_norm'), **linear('fc1', sd, 'linear_1'),
                **linear('fc2', sd, 'linear_2')})
  grid = np.random.default_rng(3).normal(size=(3, 8, 8, HIDDEN)).astype(np.float32)
  with torch.no_grad():
    shuffled = InternVLModel.pixel_shuffle(None, torch.from_numpy(grid), scale_factor=0.5)
    ref = hf_proj(shuffled.reshape(3, -1, shuffled.shape[-1])).numpy()
  ours = proj(pixel_shuffle(jnp.asarray(grid), 0.5, 'v2').reshape(3, -1, 4 * HIDDEN))
  err = np.abs(np.asarray(ours) - ref).max()
  print(f'pixel_shuffle+mlp1 max|d| {err:.2e}')
  assert err <= 1e-5


# ----------------------------------------------------------------------------- encoder, jit, golden

def test_semantic_encoder_jit_matches_eager():
  cfg = common.vision_config(hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS, mlp_dim=MLP,
                             patch_size=PATCH, image_size=IMAGE)
  enc = abstract(lambda: SemanticEncoder(cfg, common.projector_config(), 24, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(4)
  assign(enc, {'.'.join(map(str, p)): rng.normal(size=v.shape) / np.sqrt(v.shape[-1])
               for p, v in nnx.to_flat_state(nnx.state(enc, nnx.Param))})
  pixels = jnp.asarray(rng.normal(size=(2, IMAGE, IMAGE, 3)), jnp.float32)
  graphdef, state = nnx.split(enc)
  jitted = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, pixels)
  eager = enc(pixels)
  assert jitted.shape == (2, (IMAGE // PATCH // 2) ** 2, 24)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5, rtol=0)
  stages = jax.jit(lambda s, x: nnx.merge(graphdef, s).intermediates(x))(state, pixels)
  np.testing.assert_allclose(np.asarray(stages['vit_embeds']), np.asarray(eager), atol=1e-5, rtol=0)


@pytest.mark.slow  # compiling the random initialisers dominates (~20 s on a loaded 2-core CPU)
def test_real_init_runs():
  cfg = common.vision_config(hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS, mlp_dim=MLP,
                             patch_size=PATCH, image_size=IMAGE)
  enc = nnx.jit(lambda: SemanticEncoder(cfg, common.projector_config(), 24, rngs=nnx.Rngs(0)))()
  out = nnx.jit(lambda m, x: m(x))(enc, jnp.ones((1, IMAGE, IMAGE, 3)))
  assert out.shape == (1, (IMAGE // PATCH // 2) ** 2, 24) and bool(jnp.isfinite(out).all())


def test_golden_internvl2_tiny(shared_dir):
  from safetensors.numpy import load_file
  root = os.path.join(shared_dir, 'golden', 'internvl2_tiny')
  with open(os.path.join(root, 'config.json')) as f:
    cfg = json.load(f)
  v = cfg['vision_config']
  assert v['norm_type'] == 'layer_norm' and not v.get('qk_normalization', False)
  vision_cfg = common.vision_config(
      hidden_size=v['hidden_size'], num_layers=v['num_hidden_layers'],
      num_heads=v['num_attention_heads'], mlp_dim=v['intermediate_size'],
      patch_size=v['patch_size'], image_size=v['image_size'], norm_eps=v['layer_norm_eps'],
      qkv_bias=v['qkv_bias'], num_channels=v['num_channels'])
  projector_cfg = common.projector_config(downsample_ratio=cfg['downsample_ratio'],
                                          ps_version=cfg['ps_version'],
                                          select_layer=cfg['select_layer'])
  enc = abstract(lambda: SemanticEncoder(vision_cfg, projector_cfg,
                                         cfg['llm_config']['hidden_size'], rngs=nnx.Rngs(0)))

  sd = load_file(os.path.join(root, 'model.safetensors'))
  names = {'norm1': 'norm1', 'norm2': 'norm2', 'ls1': 'ls1', 'ls2': 'ls2', 'qkv': 'attn.qkv',
           'proj': 'attn.proj', 'fc1': 'mlp.fc1', 'fc2': 'mlp.fc2'}
  vit = vit_params(sd, cls='vision_model.embeddings.class_embedding',
                   pos='vision_model.embeddings.position_embedding',
                   patch='vision_model.embeddings.patch_embedding',
                   layer_keys=lambda i: torch_layer(sd, f'vision_model.encoder.layers.{i}.', names),
                   num_layers=v['num_hidden_layers'])
  flat = {f'vit.{k}': a for k, a in vit.items()}
  flat.update({**norm('mlp1.norm', sd, 'mlp1.0'), **linear('mlp1.fc1', sd, 'mlp1.1'),
               **linear('mlp1.fc2', sd, 'mlp1.3')})
  assign(enc, flat)

  pixels = np.load(os.path.join(root, 'inputs.npz'))['pixel_values'].transpose(0, 2, 3, 1)
  want = np.load(os.path.join(root, 'outputs.npz'))
  got = nnx.jit(lambda m, x: m.intermediates(x))(enc, jnp.asarray(pixels))
  for ours, theirs in (('vit_last_hidden', 'vision_last_hidden_state'),
                       ('vit_hidden_states', 'vision_hidden_states'),
                       ('pixel_shuffle_out', 'pixel_shuffle_out'), ('vit_embeds', 'vit_embeds')):
    err = np.abs(np.asarray(got[ours]) - want[theirs]).max()
    print(f'golden {theirs}: max|d| {err:.2e}')
    assert err <= 1e-5, theirs
