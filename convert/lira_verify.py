"""`--verify` for the LIRA projector part: run converted params on DIR/inputs.npz and compare with
DIR/outputs.npz (array names as in ../shared/golden/README.md, lira_projector_tiny).

The per-image arrays (inputs `internvl_vit_embeds_{i}`, outputs `visual_tokens_{i}`,
`valid_query_tokens_{i}`) have per-image lengths: they are padded into the static buffers SEFE
takes and read back through its validity masks.
"""
from __future__ import annotations

import pathlib
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convert.cli import compare_golden
from lira_jax import param_io
from lira_jax.models.sefe import SEFE, valid_query_slots
from lira_jax.models.seg_projector import TextToVision


class LiraProjectors(nnx.Module):
  """The projector part of LIRA alone, at the paths it has in the full model: `projector` (SEFE)
  and `text2vision` (TextToVision). cfg: the model section (llm.hidden_size, sefe, text2vision)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    mods = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    self.projector = SEFE(cfg.sefe, cfg.llm.hidden_size, **mods)
    self.text2vision = TextToVision(cfg.llm.hidden_size, cfg.text2vision.out_dim, **mods)


def build_model(params: Mapping[str, np.ndarray], cfg) -> LiraProjectors:
  model = nnx.eval_shape(lambda: LiraProjectors(cfg.model, rngs=nnx.Rngs(0)))
  param_io.assign(model, {k: jnp.asarray(v) for k, v in params.items()})
  return model


def padded_per_image(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Per-image f32[n_i, H] -> f32[B, max n_i, H] (zero padding) + valid bool[B, max n_i]."""
  length = max(a.shape[0] for a in arrays)
  out = np.zeros((len(arrays), length, arrays[0].shape[-1]), np.float32)
  valid = np.zeros((len(arrays), length), bool)
  for i, a in enumerate(arrays):
    out[i, :len(a)], valid[i, :len(a)] = a, True
  return out, valid


@jax.jit
def _projector_arrays(model: LiraProjectors, clip_feature, query_feat, query_valid, internvl,
                      internvl_valid):
  sefe = model.projector
  block = sefe(clip_feature, query_feat, query_valid, internvl, internvl_valid).compact()
  everything = sefe.query_tokens(query_feat)
  index, slot_valid = valid_query_slots(query_valid, query_feat.shape[1])
  return dict(query_proj_out=sefe.query_proj(query_feat), query_tokens_all=everything,
              clip_tokens=sefe.clip_tokens(clip_feature), block=block.tokens,
              block_valid=block.valid, slot_valid=slot_valid,
              valid_queries=jnp.take_along_axis(everything, index[..., None], axis=1))


def predictions(model: LiraProjectors, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every golden array the projector part can produce from `inputs`."""
  out = {}
  if 'clip_feature' in inputs:
    batch = inputs['clip_feature'].shape[0]
    # Validity as the projector derives it: the query owns at least one cell.
    query_valid = ~np.asarray(inputs['attention_mask'], bool).all(-1)
    per_image = [inputs.get(f'internvl_vit_embeds_{i}') for i in range(batch)]
    internvl, internvl_valid = (padded_per_image(per_image) if all(a is not None for a in per_image)
                                else (None, None))
    res = jax.device_get(_projector_arrays(
        model, jnp.asarray(inputs['clip_feature']), jnp.asarray(inputs['query_feat']),
        jnp.asarray(query_valid), internvl, internvl_valid))
    out.update({k: res[k] for k in ('query_proj_out', 'query_tokens_all', 'clip_tokens')})
    for i in range(batch):
      out[f'visual_tokens_{i}'] = res['block'][i, :res['block_valid'][i].sum()]
      out[f'valid_query_tokens_{i}'] = res['valid_queries'][i, :res['slot_valid'][i].sum()]
  if 'seg_hidden_states' in inputs:
    out['seg_queries'] = jax.jit(lambda m, x: m.text2vision(x))(
        model, jnp.asarray(inputs['seg_hidden_states']))
  return {k: np.asarray(v) for k, v in out.items()}


def golden_errors(params, cfg, directory: pathlib.Path) -> dict[str, tuple[float, float]]:
  return compare_golden(directory, lambda inputs: predictions(build_model(params, cfg), inputs))
