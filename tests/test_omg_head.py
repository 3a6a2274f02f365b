"""OMG-Seg glue: CLIP tokens and panoptic_postprocess vs the golden omg_seg_head_tiny arrays, the
[SEG] mask post-processing vs PyTorch, and the batched [SEG] path vs one query at a time."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lira_jax  # noqa: F401
from configs import omg_seg
from lira_jax.models.mask_decoder import MaskedAttentionDecoder
from lira_jax.models.omg_head import clip_tokens, panoptic_postprocess, seg_masks_to_image


@pytest.fixture(scope='module')
def gold(shared_dir):
  d = os.path.join(shared_dir, 'golden', 'omg_seg_head_tiny')
  return dict(np.load(os.path.join(d, 'inputs.npz'))), dict(np.load(os.path.join(d, 'outputs.npz')))


def _ratio_and_grid(inputs, outputs):
  """Shuffle ratio and prior grid from the arrays: stride-32 grid h x w, G = clip tokens."""
  _, c3, h, w = inputs['backbone_feat_3'].shape
  g = outputs['clip_feature'].shape[1]
  ratio = int(round(np.sqrt(h * w / g)))
  return ratio, (h // ratio, w // ratio), c3 * ratio * ratio


def test_clip_tokens_match_golden(gold):
  inputs, outputs = gold
  ratio, _, width = _ratio_and_grid(inputs, outputs)
  tokens = clip_tokens(jnp.asarray(np.moveaxis(inputs['backbone_feat_3'], 1, -1)), ratio)
  np.testing.assert_array_equal(tokens, outputs['clip_feature'][..., :width])


def test_panoptic_postprocess_matches_golden(gold):
  inputs, o = gold
  _, grid, width = _ratio_and_grid(inputs, o)
  num_classes = o['cls_pred_per_layer'].shape[-1] - 2  # K + background + IoU
  prior = jax.jit(panoptic_postprocess, static_argnums=(4, 5))(
      jnp.asarray(o['cls_pred_per_layer'][-1][..., :num_classes + 1]),
      jnp.asarray(o['mask_pred_per_layer'][-1]), jnp.asarray(o['query_feat_final']),
      jnp.asarray(o['query_embed']), tuple(int(s) for s in inputs['image_size']), grid)
  np.testing.assert_allclose(prior.pixel_query, o['clip_feature'][..., width:], atol=2e-5, rtol=0)
  np.testing.assert_array_equal(prior.query_pos_feat, o['query_pos_feat'])
  np.testing.assert_array_equal(prior.attention_mask, o['attention_mask'])
  g = o['attention_mask'].shape[-1]
  valid = o['attention_mask'].sum(-1) < g
  np.testing.assert_array_equal(prior.valid, valid)
  assert prior.valid_index.shape[1] == min(o['attention_mask'].shape[1], g)
  for b in range(valid.shape[0]):
    count = int(valid[b].sum())
    np.testing.assert_array_equal(prior.valid_index[b, :count], np.flatnonzero(valid[b]))
    assert prior.valid_slot[b, :count].all() and not prior.valid_slot[b, count:].any()


def test_seg_masks_to_image_matches_torch():
  import torch
  import torch.nn.functional as F
  rng = np.random.default_rng(0)
  sizes = [(37, 61), (64, 23), (50, 50), (1, 9), (30, 30)]
  valid = np.array([True, True, True, True, False])
  logits = rng.normal(size=(len(sizes), 16, 16)).astype(np.float32)
  canvas = (64, 64)
  got = np.asarray(jax.jit(seg_masks_to_image, static_argnums=3)(
      jnp.asarray(logits), jnp.asarray(sizes, jnp.int32), jnp.asarray(valid), canvas))
  for n, ((h, w), ok) in enumerate(zip(sizes, valid)):
    s = max(h, w)
    up = F.interpolate(torch.from_numpy(logits[n][None, None]), size=(s, s), mode='bilinear',
                       align_corners=False)[0, 0]
    top, left = (s - h) // 2, (s - w) // 2
    want = np.zeros(canvas, bool)
    if ok:
      want[:h, :w] = (up[top:top + h, left:left + w].sigmoid() > 0.5).numpy()
    np.testing.assert_array_equal(got[n], want, err_msg=f'item {n} size {(h, w)}')


def _random_decoder(cfg, seed):
  """Random weights written straight into an abstract model (no per-op eager init)."""
  model = nnx.eval_shape(lambda: MaskedAttentionDecoder(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  for path, var in nnx.iter_graph(model):
    if isinstance(var, nnx.Param):
      noise = rng.normal(size=var.shape).astype(np.float32)
      if len(var.shape) == 1:  # biases, norm scales around 1
        value = (path[-1] == 'scale') + 0.1 * noise
      else:  # N(0, 1/fan_in) like the golden weights
        value = noise / np.sqrt(var.shape[-2])
      var.set_value(jnp.asarray(value, jnp.float32))
  return model


def test_batched_seg_path_matches_one_at_a_time():
  """Several images, a different number of [SEG] queries each (one image with none), padded into
  one call, give the same mask logits and binary masks as decoding each query alone."""
  cfg = omg_seg.get_config('tiny').head
  model = _random_decoder(cfg, 1)
  rng = np.random.default_rng(2)
  b, c, feat = 3, cfg.feat_channels, (32, 32)
  mask_features = rng.normal(size=(b, *feat, c)).astype(np.float32)
  memories = [rng.normal(size=(b, feat[0] >> k, feat[1] >> k, c)).astype(np.float32)
              for k in (3, 2, 1)][:cfg.num_levels]
  image_index = np.array([2, 0, 2, 0, 2, 1, 0, 0], np.int32)
  valid = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)  # image 1 has no [SEG]
  queries = rng.normal(size=(len(valid), 2 * c)).astype(np.float32)
  sizes = jnp.asarray(rng.integers(20, 120, size=(len(valid), 2)), jnp.int32)

  @nnx.jit(static_argnums=6)
  def masks(m, q, idx, ok, f, mem, canvas):
    logits = m.forward_seg(q, idx, ok, f, mem).mask_logits
    return logits, seg_masks_to_image(logits[-1], sizes[:q.shape[0]], ok, canvas)

  canvas = (128, 128)
  batched, binary = masks(model, queries, image_index, valid, mask_features, memories, canvas)
  alone = nnx.jit(lambda m, q, f, mem: m.forward_seg(
      q, jnp.zeros((1,), jnp.int32), jnp.ones((1,), bool), f, mem).mask_logits[:, 0])
  for n in np.flatnonzero(valid):
    i = image_index[n]
    one = alone(model, queries[n:n + 1], mask_features[i:i + 1], [m[i:i + 1] for m in memories])
    np.testing.assert_allclose(batched[:, n], one, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(
        binary[n], seg_masks_to_image(one[-1:], sizes[n:n + 1], jnp.ones((1,), bool), canvas)[0])
  assert not np.any(batched[:, ~valid]) and not np.any(binary[~valid])
  assert 0.05 < np.mean(binary[valid]) < 0.95
