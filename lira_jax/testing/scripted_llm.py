"""An LLM whose greedy output follows a token script: random unit-variance embeddings, layer
outputs scaled down, and an LM head mapping the embedding of token i to a large logit for
script[i]. Attention still mixes context in (a small perturbation), so cached decoding is
exercised for real while the generated tokens are known in advance (tests, bench/ilvc.py)."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from lira_jax.models.llm import LLM


def script_llm(llm: LLM, script: Mapping[int, int], *, seed: int = 0, layer_scale: float = 0.1,
               logit_scale: float = 3.0) -> None:
  """Rewrites `llm`'s weights in place (it must have an untied lm_head)."""
  if llm.lm_head is None:
    raise ValueError('a scripted LLM needs an untied lm_head')
  emb = np.random.default_rng(seed).normal(size=llm.embed.embedding.shape).astype(np.float32)
  llm.embed.embedding[...] = emb
  llm.layers.wo.kernel[...] = layer_scale * llm.layers.wo.kernel[...]
  llm.layers.w2.kernel[...] = layer_scale * llm.layers.w2.kernel[...]
  head = np.zeros(llm.lm_head.kernel.shape, np.float32)
  for src, dst in script.items():
    head[:, dst] += logit_scale * emb[src] / np.linalg.norm(emb[src])
  llm.lm_head.kernel[...] = head
