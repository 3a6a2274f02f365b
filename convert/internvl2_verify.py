"""`--verify` for InternVL2: run converted params on DIR/inputs.npz and compare with
DIR/outputs.npz (array names as in ../shared/golden/README.md, InternVL2 section)."""
from __future__ import annotations

import pathlib
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convert.cli import compare_golden
from lira_jax import param_io
from lira_jax.models.internvl import InternVL


def build_model(params: Mapping[str, np.ndarray], cfg) -> InternVL:
  model = nnx.eval_shape(lambda: InternVL(cfg.model, rngs=nnx.Rngs(0)))
  param_io.assign(model, {k: jnp.asarray(v) for k, v in params.items()})
  return model


def predictions(model: InternVL, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every golden array this model can produce from `inputs`."""
  out = {}
  if 'pixel_values' in inputs:
    pixels = jnp.asarray(inputs['pixel_values']).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if 'image_flags' in inputs:
      pixels = pixels[np.asarray(inputs['image_flags']).astype(bool)]
    inter = jax.jit(lambda m, x: m.vision.intermediates(x))(model, pixels)
    out.update(vision_last_hidden_state=inter['vit_last_hidden'],
               vision_hidden_states=inter['vit_hidden_states'],
               pixel_shuffle_out=inter['pixel_shuffle_out'], vit_embeds=inter['vit_embeds'])
    if 'input_ids' in inputs:
      ids = jnp.asarray(inputs['input_ids'], jnp.int32)
      valid = jnp.asarray(inputs.get('attention_mask', np.ones(ids.shape)), bool)
      tiles = pixels[None]

      @jax.jit
      def run(m, ids, valid, tiles):
        embeds = m.input_embeddings(ids, tiles)
        return embeds, m.llm(embeds, valid, return_hidden_states=True)

      embeds, res = run(model, ids, valid, tiles)
      # The original's tuple: inputs, outputs of layers 0..L-2, then the final-normed output
      # (the last layer's pre-norm output is not part of it).
      layers = res['hidden_states'][:-1, 0]
      out.update(inputs_embeds=embeds, logits=res['logits'],
                 llm_last_hidden_state=res['last_hidden'],
                 llm_hidden_states=jnp.concatenate(
                     [embeds[0][None], layers, res['last_hidden'][0][None]], axis=0))
  if 'long_input_ids' in inputs:
    ids = jnp.asarray(inputs['long_input_ids'], jnp.int32)
    valid = jnp.asarray(inputs.get('long_attention_mask', np.ones(ids.shape)), bool)

    @jax.jit
    def run_text(m, ids, valid):
      return m.llm(m.llm.embed_tokens(ids), valid, return_hidden_states=True)

    res = run_text(model, ids, valid)
    out.update(long_logits=res['logits'], long_last_hidden_state=res['last_hidden'])
  return {k: np.asarray(v) for k, v in out.items()}


def golden_errors(params, cfg, directory: pathlib.Path) -> dict[str, tuple[float, float]]:
  return compare_golden(directory, lambda inputs: predictions(build_model(params, cfg), inputs))
