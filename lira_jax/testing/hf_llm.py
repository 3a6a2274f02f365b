"""A transformers reference for lira_jax.models.llm.LLM (tests and bench/decode.py): a seeded
LlamaForCausalLM / Qwen2ForCausalLM built from one of our LLM configs, and our LLM carrying its
exact weights. Needs the test extras (torch, transformers)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lira_jax.models.llm import LLM


def torch_model(cfg, seed=0):
  """A fresh transformers model (the dynamic rope is stateful, so never reuse one across calls)
  with seeded non-trivial weights: norms N(1, 0.2²), biases N(0, 0.1²), Linear N(0, 1/fan_in)."""
  common = dict(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
      max_position_embeddings=cfg.max_position_embeddings,
      tie_word_embeddings=cfg.tie_embeddings, attn_implementation='eager',
      rope_parameters=({'rope_type': 'dynamic', 'factor': cfg.rope_scaling.factor,
                        'rope_theta': cfg.rope_theta} if cfg.rope_scaling else
                       {'rope_type': 'default', 'rope_theta': cfg.rope_theta}))
  if cfg.family == 'qwen2':
    model = Qwen2ForCausalLM(Qwen2Config(**common))
  else:
    model = LlamaForCausalLM(LlamaConfig(attention_bias=False, mlp_bias=False, **common))
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if 'norm' in name:
        p.copy_(1.0 + 0.2 * noise)
      elif name.endswith('bias'):
        p.copy_(0.1 * noise)
      elif 'embed' in name:
        p.copy_(noise)
      else:
        p.copy_(noise / np.sqrt(p.shape[1]))
  return model.eval()


# our stacked Linear -> the transformers submodule of each decoder layer
_NAMES = {'wq': 'self_attn.q_proj', 'wk': 'self_attn.k_proj', 'wv': 'self_attn.v_proj',
          'wo': 'self_attn.o_proj', 'w1': 'mlp.gate_proj', 'w3': 'mlp.up_proj',
          'w2': 'mlp.down_proj'}


def llm_from_torch(cfg, model):
  """Our LLM carrying the weights of the transformers `model` built for `cfg`."""
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  stack = lambda n: jnp.asarray(
      np.stack([sd[f'model.layers.{i}.{n}'] for i in range(cfg.num_layers)]))
  llm = LLM(cfg, rngs=nnx.Rngs(0))
  llm.embed.embedding[...] = jnp.asarray(sd['model.embed_tokens.weight'])
  for ours, theirs in _NAMES.items():
    linear = getattr(llm.layers, ours)
    linear.kernel[...] = stack(f'{theirs}.weight').transpose(0, 2, 1)
    if linear.bias is not None:
      linear.bias[...] = stack(f'{theirs}.bias')
  llm.layers.attention_norm.scale[...] = stack('input_layernorm.weight')
  llm.layers.ffn_norm.scale[...] = stack('post_attention_layernorm.weight')
  llm.norm.scale[...] = jnp.asarray(sd['model.norm.weight'])
  if llm.lm_head is not None:
    llm.lm_head.kernel[...] = jnp.asarray(sd['lm_head.weight'].T)
  return llm


def jax_model(cfg, seed=0):
  """Our LLM carrying the weights of `torch_model(cfg, seed)`."""
  return llm_from_torch(cfg, torch_model(cfg, seed))
