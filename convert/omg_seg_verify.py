"""`--verify` for OMG-Seg: run converted params on DIR/inputs.npz and compare with DIR/outputs.npz
(array names as in ../shared/golden/README.md, `omg_seg_head_tiny` section). Golden maps are
NCHW; the model is NHWC."""
from __future__ import annotations

import pathlib
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from convert.cli import compare_golden
from convert.omg_seg import CLS_EMBED_FROM_OV
from lira_jax import param_io
from lira_jax.models.omg_seg import OMGSeg


def build_model(params: Mapping[str, np.ndarray], cfg) -> OMGSeg:
  model = nnx.eval_shape(lambda: OMGSeg(cfg, rngs=nnx.Rngs(0)))
  param_io.assign(model, {k: jnp.asarray(v) for k, v in params.items()})
  return model


def _nhwc(x):
  return jnp.asarray(np.moveaxis(np.asarray(x), 1, -1))


def _nchw(x):
  return np.moveaxis(np.asarray(x), -1, 1)


def predictions(model: OMGSeg, inputs: Mapping[str, np.ndarray], num_inputs: int
                ) -> dict[str, np.ndarray]:
  """Every golden array the model can produce from the backbone features in `inputs`
  (`backbone_feat_0..num_inputs-1`), the OV class embeddings and the [SEG] queries."""
  if f'backbone_feat_{num_inputs - 1}' not in inputs:
    return {}
  if 'ov_class_embed' in inputs:
    # The golden class prototypes are an input of the original head, not a checkpoint tensor.
    print('verify: decoder.cls_embed taken from inputs.npz ov_class_embed')
    (cls_embed,) = CLS_EMBED_FROM_OV.forward(inputs['ov_class_embed'])
    model.decoder.cls_embed.set_value(cls_embed.astype(model.decoder.cls_embed[...].dtype))
  feats = [_nhwc(inputs[f'backbone_feat_{i}']) for i in range(num_inputs)]
  image_size = tuple(int(s) for s in inputs['image_size']) if 'image_size' in inputs else None
  res = nnx.jit(lambda m, f: m.from_features(f, image_size=image_size))(model, feats)
  dec, prior = res.decoder, res.prior
  out = {
      'mask_features': _nchw(res.mask_features),
      'cls_pred_per_layer': jnp.concatenate([dec.class_logits, dec.iou_logits[..., None]], -1),
      'mask_pred_per_layer': dec.mask_logits,
      'decoder_query_per_layer': dec.queries,
      'query_feat_final': dec.queries[-1],
      'query_embed': prior.query_pos_feat[..., dec.queries.shape[-1]:],
      'clip_feature': res.clip_feature,
      'query_pos_feat': prior.query_pos_feat,
      'attention_mask': prior.attention_mask,
  }
  out.update({f'multi_scale_memory_{k}': _nchw(m) for k, m in enumerate(res.memories)})
  out.update({f'decoder_cross_attn_mask_layer{j}': m for j, m in enumerate(dec.attn_masks)})
  if 'seg_query' in inputs:
    index = np.asarray(inputs['seg_batch_idxs'], np.int32)
    seg = nnx.jit(lambda m, q, i, v, f, mem: m.forward_seg(q, i, v, f, mem))(
        model, jnp.asarray(inputs['seg_query'], jnp.float32), jnp.asarray(index),
        jnp.ones(index.shape, bool), res.mask_features, list(res.memories))
    # The original decodes each [SEG] as its own batch element holding one query.
    out['llm_seg_mask_pred_per_layer'] = seg.mask_logits[:, :, None]
    out['llm_seg_query_per_layer'] = seg.queries[:, :, None]
    out.update({f'llm_seg_cross_attn_mask_layer{j}': m[:, None]
                for j, m in enumerate(seg.attn_masks)})
  return {k: np.asarray(v) for k, v in out.items()}


def golden_errors(params, cfg, directory: pathlib.Path) -> dict[str, tuple[float, float]]:
  return compare_golden(directory, lambda inputs: predictions(build_model(params, cfg), inputs, len(cfg.head.in_channels)))
