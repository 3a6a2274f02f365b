"""MSDeformAttnPixelDecoder vs the golden mmdet outputs (omg_seg_head_tiny) and vs transformers'
Mask2FormerPixelDecoder at a tiny random configuration."""
import lira_jax  # noqa: F401

import json
import os
import re

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from convert import omg_seg
from lira_jax import param_io
from lira_jax.models.pixel_decoder import MSDeformAttnPixelDecoder

GOLDEN = 'golden/omg_seg_head_tiny'
PREFIX = 'panoptic_head.pixel_decoder.'
TOL = 2e-5  # golden README: OMG-Seg continuous arrays
MEMORY_TOL = 5e-5  # the deformable-encoder memories: see convert/omg_seg.py TOLERANCES


def load_mmdet_weights(model: MSDeformAttnPixelDecoder, weights: dict[str, np.ndarray],
                       head) -> None:
  """Fills `model` (abstract or concrete) with mmdet `pixel_decoder.*` tensors (prefix stripped)
  through the converter's key table; every tensor and every parameter must be matched."""
  target = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in param_io.flat_params(model).items()}
  params = omg_seg.params_from_tensors(omg_seg.pixel_decoder_rules(head, src='', dst=''),
                                       {'enc_layers': head.enc_layers}, weights, target)
  param_io.assign(model, {k: jnp.asarray(v) for k, v in params.items()})


def _abstract_model(head):
  # Shapes only: eager random init would compile dozens of tiny kernels for values we overwrite.
  return nnx.eval_shape(lambda: MSDeformAttnPixelDecoder(head, rngs=nnx.Rngs(0)))


def _forward(model, feats_nchw):
  feats = [jnp.asarray(f.transpose(0, 2, 3, 1)) for f in feats_nchw]
  mask_features, memorys = nnx.jit(lambda m, f: m(f))(model, feats)
  to_nchw = lambda x: np.asarray(x).transpose(0, 3, 1, 2)
  return to_nchw(mask_features), [to_nchw(x) for x in memorys]


def _max_err(a, b):
  return float(np.abs(np.asarray(a, np.float64) - b).max())


def test_golden_omg_seg_pixel_decoder(shared_dir):
  from safetensors.numpy import load_file
  root = os.path.join(shared_dir, GOLDEN)
  with open(os.path.join(root, 'config.json')) as f:
    head = omg_seg.config_from_golden_json(json.load(f)).head
  weights = {k[len(PREFIX):]: v for k, v in load_file(os.path.join(root, 'model.safetensors')).items()
             if k.startswith(PREFIX)}
  inputs, outputs = np.load(os.path.join(root, 'inputs.npz')), np.load(os.path.join(root, 'outputs.npz'))

  model = _abstract_model(head)
  load_mmdet_weights(model, weights, head)
  feats = [inputs[f'backbone_feat_{i}'] for i in range(len(head.in_channels))]
  mask_features, memorys = _forward(model, feats)

  errors = {'mask_features': _max_err(mask_features, outputs['mask_features'])}
  assert len(memorys) == head.num_levels
  for k, mem in enumerate(memorys):
    want = outputs[f'multi_scale_memory_{k}']
    assert mem.shape == want.shape
    errors[f'multi_scale_memory_{k}'] = _max_err(mem, want)
  print('max abs errors:', errors)
  assert errors['mask_features'] <= TOL, errors
  assert max(v for k, v in errors.items() if k.startswith('multi_scale')) <= MEMORY_TOL, errors


# transformers key -> mmdet key, for the structurally identical HF pixel decoder.
_HF_TO_MMDET = (
    (r'input_projections\.(\d+)\.0\.', r'input_convs.\1.conv.'),
    (r'input_projections\.(\d+)\.1\.', r'input_convs.\1.gn.'),
    (r'\.self_attn_layer_norm\.', '.norms.0.'),
    (r'\.final_layer_norm\.', '.norms.1.'),
    (r'\.fc1\.', '.ffn.layers.0.0.'),
    (r'\.fc2\.', '.ffn.layers.1.'),
    (r'^level_embed$', 'level_encoding.weight'),
    (r'^adapter_(\d+)\.0\.', 'lateral_convs.{}.conv.'),
    (r'^adapter_(\d+)\.1\.', 'lateral_convs.{}.gn.'),
    (r'^layer_(\d+)\.0\.', 'output_convs.{}.conv.'),
    (r'^layer_(\d+)\.1\.', 'output_convs.{}.gn.'),
    (r'^mask_projection\.', 'mask_feature.'),
)


def _hf_to_mmdet_key(key: str, num_fpn: int) -> str:
  for pattern, repl in _HF_TO_MMDET:
    m = re.search(pattern, key)
    if m and '{}' in repl:
      # HF numbers FPN adapters from the highest resolution (adapter_1 = stride 4); mmdet lists
      # them from the lowest.
      return re.sub(pattern, repl.format(num_fpn - int(m[1])), key)
    key = re.sub(pattern, repl, key)
  return key


@pytest.mark.slow
def test_matches_transformers_mask2former_pixel_decoder():
  import torch
  from transformers import Mask2FormerConfig
  from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder

  # transformers hard-codes 3 levels, 4 points and GroupNorm(32); the rest is free.
  head = ml_collections.ConfigDict(dict(
      in_channels=(8, 16, 24, 40), strides=(4, 8, 16, 32), feat_channels=64, num_levels=3,
      gn_groups=32, enc_layers=2, enc_heads=4, enc_points=4, enc_ffn=96))
  config = Mask2FormerConfig(
      feature_size=head.feat_channels, mask_feature_size=head.feat_channels,
      encoder_feedforward_dim=head.enc_ffn, encoder_layers=head.enc_layers,
      num_attention_heads=head.enc_heads, feature_strides=list(head.strides), common_stride=4)
  torch.manual_seed(0)
  ref = Mask2FormerPixelDecoder(config, feature_channels=list(head.in_channels)).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():  # the golden set's recipe (README "Random weights")
      if name == 'level_embed':
        p.normal_()
      elif p.ndim == 1:
        p.normal_(1.0 if name.endswith('weight') else 0.0, 0.2 if name.endswith('weight') else 0.1)
      else:
        p.normal_(0, p[0].numel() ** -0.5)
  num_fpn = len(head.in_channels) - head.num_levels
  weights = {_hf_to_mmdet_key(k, num_fpn): v.detach().numpy()
             for k, v in ref.state_dict().items()}

  model = _abstract_model(head)
  load_mmdet_weights(model, weights, head)
  rng = np.random.default_rng(0)
  size = 64
  feats = [rng.standard_normal((2, c, size // s, size // s)).astype(np.float32)
           for c, s in zip(head.in_channels, head.strides)]
  with torch.no_grad():
    want = ref([torch.from_numpy(f) for f in feats])
  mask_features, memorys = _forward(model, feats)
  errors = [_max_err(mask_features, want.mask_features.numpy())]
  errors += [_max_err(a, b.numpy()) for a, b in zip(memorys, want.multi_scale_features, strict=True)]
  print('max abs errors (mask_features, memorys):', errors)
  assert max(errors) <= TOL, errors


def test_sine_position_encodings_vs_float64_formula():
  from lira_jax.nn.position import sine_position_2d, sine_position_3d_single_frame
  h, w, feats = 5, 7, 16

  def sine(coord, n):  # mmdet: channel 2k sin, 2k+1 cos, both at frequency 10000^(2k/n)
    k = np.arange(n)
    angle = np.asarray(coord, np.float64)[..., None] / 10000.0 ** (2 * (k // 2) / n)
    return np.where(k % 2 == 0, np.sin(angle), np.cos(angle))

  y = sine(np.arange(1, h + 1) / (h + 1e-6) * 2 * np.pi, feats)
  x = sine(np.arange(1, w + 1) / (w + 1e-6) * 2 * np.pi, feats)
  want_2d = np.concatenate([np.repeat(y[:, None], w, 1), np.repeat(x[None], h, 0)], -1)
  want_3d = want_2d + sine(2 * np.pi / (1 + 1e-6), 2 * feats)
  np.testing.assert_allclose(sine_position_2d(h, w, feats), want_2d, atol=1e-6, rtol=0)
  np.testing.assert_allclose(sine_position_3d_single_frame(h, w, feats), want_3d, atol=1e-6, rtol=0)
