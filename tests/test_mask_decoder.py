"""MaskedAttentionDecoder vs the original mmdet/OMG-Seg computation (golden omg_seg_head_tiny) and
vs transformers' Mask2Former masked-attention decoder.

The golden pixel-decoder outputs are fed directly, so only the transformer decoder, its heads and
the [SEG] path are under test. transformers' Mask2Former decoder has the same layer order
(cross -> LN -> self -> LN -> FFN -> LN, post-norm), mask predictor and mask rule; it has no
sphere classifier / IoU head and builds 2-D (not 3-D) key positions itself, so it is driven here
through its decoder module with our level inputs and positions.
"""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lira_jax  # noqa: F401
from configs import omg_seg
from convert import keymap
from convert import omg_seg as omg_seg_convert
from lira_jax import param_io
from lira_jax.models.mask_decoder import DecoderLayer, MaskedAttentionDecoder
from lira_jax.nn.position import sine_position_3d_single_frame
from tests.test_omg_head import _random_decoder

MASK_TOL, CLS_TOL, TOL = 5e-5, 2e-4, 2e-5


def head_config(gold_dir):
  with open(os.path.join(gold_dir, 'config.json')) as f:
    return omg_seg_convert.config_from_golden_json(json.load(f)).head


def _assign(var, value):
  value = np.asarray(value, np.float32)
  assert var.shape == value.shape, (var.shape, value.shape)
  var.set_value(jnp.asarray(value))


def _linear(lin, weight, bias):
  """torch Linear weight [..., out, in] -> kernel [..., in, out]."""
  _assign(lin.kernel, np.swapaxes(weight, -1, -2))
  _assign(lin.bias, bias)


def _mlp(mlp, get, prefix, torch_indices):
  for layer, i in zip(mlp.layers, torch_indices):
    _linear(layer, get(f'{prefix}.{i}.weight'), get(f'{prefix}.{i}.bias'))


def load_decoder(model, tensors, ov_class_embed, head, prefix='panoptic_head.'):
  """mmdet state dict + OV class embeddings -> MaskedAttentionDecoder through the converter's key
  table; every non-pixel-decoder key and every parameter must be matched."""
  rules = omg_seg_convert.decoder_rules(head, src=prefix, dst='') + [
      keymap.r(omg_seg_convert.OV_KEY, 'cls_embed', omg_seg_convert.CLS_EMBED_FROM_OV)]
  target = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in param_io.flat_params(model).items()}
  params = omg_seg_convert.params_from_tensors(
      rules, {'dec_layers': head.dec_layers}, {**tensors, omg_seg_convert.OV_KEY: ov_class_embed},
      target, {'^' + re.escape(prefix + 'pixel_decoder.'): 'pixel decoder, not under test'})
  param_io.assign(model, {k: jnp.asarray(v) for k, v in params.items()})


def nhwc(x):
  return jnp.asarray(np.moveaxis(np.asarray(x), 1, -1))


@pytest.fixture(scope='module')
def gold(shared_dir):
  import safetensors.numpy
  d = os.path.join(shared_dir, 'golden', 'omg_seg_head_tiny')
  inputs = dict(np.load(os.path.join(d, 'inputs.npz')))
  outputs = dict(np.load(os.path.join(d, 'outputs.npz')))
  cfg = head_config(d)
  # Abstract model: every parameter is then written from the checkpoint (no eager random init).
  model = nnx.eval_shape(lambda: MaskedAttentionDecoder(cfg, rngs=nnx.Rngs(0)))
  load_decoder(model, safetensors.numpy.load_file(os.path.join(d, 'model.safetensors')),
               inputs['ov_class_embed'], cfg)
  memories = [nhwc(outputs[f'multi_scale_memory_{k}']) for k in range(cfg.num_levels)]
  return dict(cfg=cfg, model=model, inputs=inputs, outputs=outputs,
              mask_features=nhwc(outputs['mask_features']), memories=memories)


def _max_err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _check_panoptic(out, o, num_layers):
  assert _max_err(out.mask_logits, o['mask_pred_per_layer']) < MASK_TOL
  cls = np.concatenate([out.class_logits, np.asarray(out.iou_logits)[..., None]], -1)
  assert _max_err(cls, o['cls_pred_per_layer']) < CLS_TOL
  assert _max_err(out.queries, o['decoder_query_per_layer']) < TOL
  for j in range(num_layers):
    np.testing.assert_array_equal(out.attn_masks[j], o[f'decoder_cross_attn_mask_layer{j}'])


def test_panoptic_pass_matches_golden(gold):
  model, o = gold['model'], gold['outputs']
  out = nnx.jit(lambda m, f, mem: m(f, mem))(model, gold['mask_features'], gold['memories'])
  _check_panoptic(out, o, gold['cfg'].dec_layers)
  np.testing.assert_allclose(out.queries[-1], o['query_feat_final'], atol=TOL, rtol=0)


def test_panoptic_teacher_forcing(gold):
  model, o, cfg = gold['model'], gold['outputs'], gold['cfg']
  masks = [o[f'decoder_cross_attn_mask_layer{j}'] for j in range(cfg.dec_layers)]
  out = nnx.jit(lambda m, f, mem, t: m(f, mem, attn_masks=t))(
      model, gold['mask_features'], gold['memories'], masks)
  _check_panoptic(out, o, cfg.dec_layers)


@pytest.mark.parametrize('teacher', [False, True])
def test_llm_seg_path_matches_golden(gold, teacher):
  """forward_llm_seg, with two padding slots (garbage query, out-of-range image) appended."""
  model, o, i, cfg = gold['model'], gold['outputs'], gold['inputs'], gold['cfg']
  n = len(i['seg_batch_idxs'])
  rng = np.random.default_rng(0)
  queries = np.concatenate([i['seg_query'], rng.normal(size=(2, i['seg_query'].shape[1]))])
  index = np.concatenate([i['seg_batch_idxs'], [7, -3]]).astype(np.int32)
  valid = np.arange(n + 2) < n
  teach = None
  if teacher:
    teach = [np.concatenate([o[f'llm_seg_cross_attn_mask_layer{j}'][:, 0],
                             np.zeros((2, o[f'llm_seg_cross_attn_mask_layer{j}'].shape[-1]), bool)])
             for j in range(cfg.dec_layers)]
  out = nnx.jit(lambda m, *a, t: m.forward_seg(*a, attn_masks=t))(
      model, jnp.asarray(queries, jnp.float32), jnp.asarray(index), jnp.asarray(valid),
      gold['mask_features'], gold['memories'], t=teach)
  assert out.mask_logits.shape == (cfg.dec_layers + 1, n + 2, *o['mask_features'].shape[-2:])
  assert _max_err(out.mask_logits[:, :n], o['llm_seg_mask_pred_per_layer'][:, :, 0]) < MASK_TOL
  assert _max_err(out.queries[:, :n], o['llm_seg_query_per_layer'][:, :, 0]) < TOL
  for j in range(cfg.dec_layers):
    np.testing.assert_array_equal(out.attn_masks[j][:n],
                                  o[f'llm_seg_cross_attn_mask_layer{j}'][:, 0])
    assert not np.any(out.attn_masks[j][n:])
  assert not np.any(out.mask_logits[:, n:]) and not np.any(out.queries[:, n:])
  assert out.class_logits is None


# --------------------------------------------------------------------------- transformers parity
def _hf_mask2former():
  pytest.importorskip('scipy')
  from transformers.models.mask2former import modeling_mask2former as m2f
  return m2f


def _randomise(module, seed):
  """Weights N(0, 1/fan_in), biases N(0, 0.1^2), LayerNorm scales around 1."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * (p.shape[-1] ** -0.5 if p.ndim > 1 else 0.1))
    for m in module.modules():
      if isinstance(m, torch.nn.LayerNorm):
        m.weight.add_(1.0)


def _set_layer_from_hf(layer, hf, c):
  """transformers Mask2FormerMaskedAttentionDecoderLayer (torch) -> our DecoderLayer."""
  t = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  w, b = t['cross_attn.in_proj_weight'], t['cross_attn.in_proj_bias']
  cross = layer.cross_attn
  for i, proj in enumerate((cross.q_proj, cross.k_proj, cross.v_proj)):
    _linear(proj, w[i * c:(i + 1) * c], b[i * c:(i + 1) * c])
  _linear(cross.out_proj, t['cross_attn.out_proj.weight'], t['cross_attn.out_proj.bias'])
  for name in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
    _linear(getattr(layer.self_attn, name), t[f'self_attn.{name}.weight'],
            t[f'self_attn.{name}.bias'])
  _linear(layer.ffn.fc1, t['fc1.weight'], t['fc1.bias'])
  _linear(layer.ffn.fc2, t['fc2.weight'], t['fc2.bias'])
  for k, name in enumerate(('cross_attn_layer_norm', 'self_attn_layer_norm', 'final_layer_norm')):
    norm = getattr(layer, f'norms_{k}')
    _assign(norm.scale, t[f'{name}.weight'])
    _assign(norm.bias, t[f'{name}.bias'])


def _hf_config(c, heads, ffn, layers):
  m2f = _hf_mask2former()
  return m2f.Mask2FormerConfig(hidden_dim=c, mask_feature_size=c, num_attention_heads=heads,
                               dim_feedforward=ffn, decoder_layers=layers, dropout=0.0,
                               pre_norm=False, activation_function='relu')


def test_single_layer_matches_transformers():
  import torch
  m2f = _hf_mask2former()
  b, q, c, heads, ffn, (h, w) = 2, 5, 16, 4, 24, (6, 5)
  hf = m2f.Mask2FormerMaskedAttentionDecoderLayer(_hf_config(c, heads, ffn, 2)).eval()
  _randomise(hf, 1)
  ours = nnx.eval_shape(lambda: DecoderLayer(c, heads, ffn, dtype=jnp.float32,
                                             param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
  _set_layer_from_hf(ours, hf, c)

  rng = np.random.default_rng(2)
  query, qpos = rng.normal(size=(2, b, q, c)).astype(np.float32)
  key = rng.normal(size=(b, h * w, c)).astype(np.float32)
  kpos = sine_position_3d_single_frame(h, w, c // 2).reshape(h * w, c)
  blocked = rng.random((b, q, h * w)) < 0.6
  blocked[0, 1] = True  # a fully blocked row is opened, as the decoder does before each layer
  blocked &= ~blocked.all(-1, keepdims=True)

  seq = lambda x: torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 0, 1)))
  with torch.no_grad():
    ref = hf(seq(query), 0, None, [seq(np.broadcast_to(kpos, key.shape))], seq(qpos), [seq(key)],
             encoder_attention_mask=torch.from_numpy(np.repeat(blocked, heads, axis=0)))[0]
  ref = np.swapaxes(ref.numpy(), 0, 1)
  got = ours(jnp.asarray(query), jnp.asarray(qpos), jnp.asarray(key), jnp.asarray(kpos),
             jnp.asarray(~blocked))
  assert _max_err(got, ref) < 1e-4


@pytest.mark.slow
def test_decoder_matches_transformers():
  """Whole masked-attention loop (mask head, attention-mask rule, level schedule) vs
  Mask2FormerMaskedAttentionDecoder with our keys/positions; class head not covered there."""
  import torch
  m2f = _hf_mask2former()
  cfg = omg_seg.get_config('tiny').head
  c, layers, heads, nq, b = cfg.feat_channels, cfg.dec_layers, cfg.dec_heads, cfg.num_queries, 2
  hf = m2f.Mask2FormerMaskedAttentionDecoder(_hf_config(c, heads, cfg.dec_ffn, layers + 1)).eval()
  _randomise(hf, 3)
  ours = _random_decoder(cfg, 0)  # tables (queries, level embed) stay random; the rest is HF's
  sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  graphdef, state = nnx.split(ours.layers)
  slices = []
  for j in range(layers):
    layer = nnx.merge(graphdef, jax.tree.map(lambda a: a[j], state))
    _set_layer_from_hf(layer, hf.layers[j], c)
    slices.append(nnx.state(layer))
  nnx.update(ours.layers, jax.tree.map(lambda *a: jnp.stack(a), *slices))
  _assign(ours.post_norm.scale, sd['layernorm.weight'])
  _assign(ours.post_norm.bias, sd['layernorm.bias'])
  _mlp(ours.mask_embed, lambda k: sd[k], 'mask_predictor.mask_embedder', ('0.0', '1.0', '2.0'))

  rng = np.random.default_rng(4)
  sizes = [(4, 4), (8, 8), (16, 16)]
  mask_features = rng.normal(size=(b, 32, 32, c)).astype(np.float32)
  memories = [rng.normal(size=(b, *s, c)).astype(np.float32) for s in sizes]
  out = nnx.jit(lambda m, f, mem: m(f, mem))(ours, jnp.asarray(mask_features),
                                             [jnp.asarray(x) for x in memories])
  blocked = np.mean(np.concatenate([np.ravel(m) for m in out.attn_masks]))
  assert 0.1 < blocked < 0.9, f'masking barely exercised ({blocked:.2f} of keys blocked)'

  level = np.asarray(ours.level_embed[...])
  seq = lambda x: torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 0, 1)))
  keys = [seq(m.reshape(b, -1, c) + level[k]) for k, m in enumerate(memories)]
  pos = [seq(np.broadcast_to(sine_position_3d_single_frame(*s, c // 2).reshape(-1, c),
                             (b, s[0] * s[1], c))) for s in sizes]
  qf = np.broadcast_to(np.asarray(ours.query_feat[...]), (b, nq, c))
  qe = np.broadcast_to(np.asarray(ours.query_embed[...]), (b, nq, c))
  with torch.no_grad():
    ref = hf(inputs_embeds=seq(qf), multi_stage_positional_embeddings=pos,
             pixel_embeddings=torch.from_numpy(np.moveaxis(mask_features, -1, 1).copy()),
             encoder_hidden_states=keys, query_position_embeddings=seq(qe),
             feature_size_list=sizes, output_hidden_states=True, return_dict=True)
  ref_masks = np.stack([m.numpy() for m in ref.masks_queries_logits])
  ref_queries = np.stack([np.swapaxes(h.numpy(), 0, 1) for h in ref.hidden_states[1:]])
  assert _max_err(out.mask_logits, ref_masks) < 1e-4
  assert _max_err(out.queries, ref_queries) < 1e-4


# ----------------------------------------------------------------- [SEG]-path decoder copy
def _with_seg_copy(cfg):
  cfg = cfg.copy_and_resolve_references()
  cfg.seg_decoder_copy = True
  return cfg


def test_seg_decoder_copy_is_seeded_from_the_panoptic_decoder(gold):
  """transfer_params (stage seeding) fills a model with the `_llm` copy from one without it:
  every copy equals its original (OMG-LLaVA's init_new_decoder), the rest is copied as is."""
  from lira_jax.models.mask_decoder import SEG_COPY_SOURCES
  from lira_jax.train.loop import transfer_params
  from lira_jax.train.sharded_step import TrainState

  def state_of(model):
    zero = jnp.zeros((), jnp.int32)
    return TrainState(nnx.state(model, nnx.Param), nnx.State({}), None, zero, zero)

  with_copy = MaskedAttentionDecoder(_with_seg_copy(gold['cfg']), rngs=nnx.Rngs(1))
  seeded, copied = transfer_params(state_of(with_copy), state_of(gold['model']))
  flat = {'.'.join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(seeded.trainable)}
  source = param_io.flat_params(gold['model'])
  assert copied == len(flat) and set(flat) - set(source)
  for key, value in flat.items():
    original = key
    for copy, name in SEG_COPY_SOURCES.items():
      original = original.replace(copy, name)
    np.testing.assert_array_equal(value, source[original])


def test_seg_decoder_copy_drives_the_seg_path_only(gold):
  """With the copy seeded from the originals the [SEG] path reproduces the golden
  forward_llm_seg; changing the copy changes [SEG] masks and leaves the panoptic pass golden."""
  from lira_jax.models.mask_decoder import SEG_COPY_SOURCES
  model = MaskedAttentionDecoder(_with_seg_copy(gold['cfg']), rngs=nnx.Rngs(1))
  params = param_io.flat_params(gold['model'])
  for copy, name in SEG_COPY_SOURCES.items():
    params.update({k.replace(name, copy, 1): v for k, v in params.items()
                   if k.split('.')[0] == name})
  param_io.assign(model, params)
  i, o = gold['inputs'], gold['outputs']
  n = len(i['seg_batch_idxs'])
  seg = nnx.jit(lambda m, *a: m.forward_seg(*a))
  args = (jnp.asarray(i['seg_query'], jnp.float32), jnp.asarray(i['seg_batch_idxs'], jnp.int32),
          jnp.ones((n,), bool), gold['mask_features'], gold['memories'])
  assert _max_err(seg(model, *args).mask_logits, o['llm_seg_mask_pred_per_layer'][:, :, 0]) < MASK_TOL

  last = model.mask_embed_llm.layers[-1]
  last.bias.set_value(last.bias[...] + 1.0)
  assert _max_err(seg(model, *args).mask_logits, o['llm_seg_mask_pred_per_layer'][:, :, 0]) > 0.1
  out = nnx.jit(lambda m, f, mem: m(f, mem))(model, gold['mask_features'], gold['memories'])
  _check_panoptic(out, o, gold['cfg'].dec_layers)
