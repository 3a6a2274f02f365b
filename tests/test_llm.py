"""LLM parity against transformers (Llama with dynamic NTK = InternLM2 after the wqkv split; Qwen2),
KV-cache decoding, padding anywhere, and no recompilation when the validity changes."""
import lira_jax  # noqa: F401  (first: disables eager sharding)

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from configs.common import llm_config
from lira_jax.testing.hf_llm import jax_model, torch_model

TOL = 1e-4
VOCAB, D, LAYERS, HEADS, KV_HEADS, MLP = 64, 64, 2, 4, 2, 96


def make_cfg(family, *, max_pos, dynamic=True, tie=False):
  return llm_config(
      family=family, vocab_size=VOCAB, hidden_size=D, num_layers=LAYERS, num_heads=HEADS,
      num_kv_heads=KV_HEADS, mlp_dim=MLP, norm_eps=1e-5 if family == 'internlm2' else 1e-6,
      rope_theta=1e6, rope_scaling={'type': 'dynamic', 'factor': 2.0} if dynamic else None,
      max_position_embeddings=max_pos, tie_embeddings=tie)


def random_ids(seed, *shape):
  return np.random.default_rng(seed).integers(0, VOCAB, shape)


def torch_forward(cfg, ids):
  """(logits, every layer's output, final-normed hidden) of a fresh transformers model."""
  model, per_layer = torch_model(cfg), []
  for layer in model.model.layers:
    # A decoder layer returns its hidden states (a tensor, or a tuple led by it).
    layer.register_forward_hook(lambda mod, args, out: per_layer.append(
        (out[0] if isinstance(out, tuple) else out).numpy()))
  with torch.no_grad():
    out = model(torch.as_tensor(ids), output_hidden_states=True)
  return out.logits.numpy(), np.stack(per_layer), out.hidden_states[-1].numpy()


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ids, valid):
  model = nnx.merge(graphdef, state)
  return model(model.embed_tokens(ids), valid, return_hidden_states=True)


@functools.partial(jax.jit, static_argnums=0)
def _prefill(graphdef, state, ids, valid, cache):
  model = nnx.merge(graphdef, state)
  return model.prefill(model.embed_tokens(ids), valid, cache)


@functools.partial(jax.jit, static_argnums=0)
def _extend(graphdef, state, ids, valid, cache):
  model = nnx.merge(graphdef, state)
  return model.extend(model.embed_tokens(ids), valid, cache)


def our_forward(model, ids, valid=None):
  valid = np.ones(ids.shape, bool) if valid is None else valid
  return _forward(*nnx.split(model), jnp.asarray(ids), jnp.asarray(valid))


def decode(model, ids, valid, chunks, max_len=24):
  """Prefill chunks[0] tokens, then extend by each following chunk size; logits concatenated."""
  graphdef, state = nnx.split(model)
  ids, valid = jnp.asarray(ids), jnp.asarray(valid)
  cache = model.init_cache(ids.shape[0], max_len)
  logits, _, cache = _prefill(graphdef, state, ids[:, :chunks[0]], valid[:, :chunks[0]], cache)
  outs, start = [logits], chunks[0]
  for c in chunks[1:]:
    piece = slice(start, start + c)
    logits, _, cache = _extend(graphdef, state, ids[:, piece], valid[:, piece], cache)
    outs.append(logits)
    start += c
  assert int(cache.index) == start
  np.testing.assert_array_equal(cache.next_pos, valid[:, :start].sum(-1))
  return np.concatenate(outs, axis=1)


def max_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# One InternLM2 config (max_position_embeddings 16) for most tests keeps compilations few.
MAX_POS = 16
INTERNLM2 = dict(family='internlm2', max_pos=MAX_POS)


@pytest.mark.parametrize('length', [12, 24], ids=['within_max_pos', 'dynamic_ntk'])
def test_internlm2_matches_llama_dynamic_rope(length):
  cfg = make_cfg(**INTERNLM2)
  ids = random_ids(1, 2, length)
  logits, per_layer, last = torch_forward(cfg, ids)
  out = our_forward(jax_model(cfg), ids)
  assert max_err(out['logits'], logits) <= TOL
  assert max_err(out['hidden_states'], per_layer) <= TOL
  assert max_err(out['last_hidden'], last) <= TOL
  if length > MAX_POS:
    # The scaled base must matter at this length, or the test would not exercise it.
    plain, _, _ = torch_forward(make_cfg(**INTERNLM2, dynamic=False), ids)
    assert max_err(out['logits'], plain) > 1e-2


def test_qwen2_bias_and_tied_embeddings():
  cfg = make_cfg('qwen2', max_pos=64, dynamic=False, tie=True)
  model = jax_model(cfg)
  assert model.lm_head is None and model.layers.wq.bias is not None
  ids = random_ids(2, 2, 12)
  logits, _, last = torch_forward(cfg, ids)
  out = our_forward(model, ids)
  assert max_err(out['logits'], logits) <= TOL
  assert max_err(out['last_hidden'], last) <= TOL


def test_cache_decoding_matches_full_forward():
  model = jax_model(make_cfg(**INTERNLM2))
  ids = random_ids(3, 2, 12)
  full = our_forward(model, ids)['logits']
  # prefill 5, three single steps, a chunk of 3, one step (12 ≤ max_position_embeddings)
  cached = decode(model, ids, np.ones(ids.shape, bool), [5, 1, 1, 1, 3, 1])
  assert max_err(cached, full) <= TOL


def test_cache_decoding_across_dynamic_ntk_threshold():
  """Independent check of the cached semantics against transformers' incremental decoding: keys
  in the cache keep their rotation, new tokens use the base for the current length."""
  cfg = make_cfg(**INTERNLM2)
  ids = random_ids(4, 2, 24)
  chunks = [5, 3, 3, 3, 1, 1, 1, 3, 1, 3]
  ref, past, start, hf = [], None, 0, torch_model(cfg)
  with torch.no_grad():
    for c in chunks:
      out = hf(torch.as_tensor(ids[:, start:start + c]), past_key_values=past, use_cache=True)
      ref.append(out.logits.numpy())
      past, start = out.past_key_values, start + c
  cached = decode(jax_model(cfg), ids, np.ones(ids.shape, bool), chunks)
  assert max_err(cached, np.concatenate(ref, axis=1)) <= TOL


def _scatter(ids, valid):
  """Places each row's tokens at the True slots of `valid` (padding id 0 elsewhere)."""
  out = np.zeros(valid.shape, ids.dtype)
  for b in range(valid.shape[0]):
    out[b, valid[b]] = ids[b, :valid[b].sum()]
  return out


def _check_samples(cfg, logits, ids, valid):
  """Each sample's logits at its valid slots equal transformers on that sample alone, unpadded."""
  for b in range(ids.shape[0]):
    ref, _, _ = torch_forward(cfg, ids[b:b + 1, valid[b]])
    assert max_err(np.asarray(logits)[b, valid[b]], ref[0]) <= TOL


@pytest.mark.parametrize('side', ['left', 'right'])
def test_padded_batch_matches_single_samples(side):
  """Per-sample NTK: sample 0 stays below max_position_embeddings, sample 1 goes above it."""
  cfg = make_cfg(**INTERNLM2)
  valid = np.zeros((2, 24), bool)
  for b, n in enumerate([10, 22]):
    valid[b, slice(24 - n, None) if side == 'left' else slice(0, n)] = True
  ids = _scatter(random_ids(5, 2, 24), valid)
  _check_samples(cfg, our_forward(jax_model(cfg), ids, valid)['logits'], ids, valid)


def test_padded_cache_decoding_matches_single_samples():
  """Left-padded prefill, then steps and chunks where samples add different numbers of tokens."""
  cfg = make_cfg(**INTERNLM2)
  valid = np.array([[0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 0, 1],
                    [1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 1, 0]], bool)
  ids = _scatter(random_ids(6, 2, valid.shape[1]), valid)
  _check_samples(cfg, decode(jax_model(cfg), ids, valid, [5, 1, 3, 1, 1, 3]), ids, valid)


def test_no_recompilation_when_validity_changes():
  model = jax_model(make_cfg(**INTERNLM2))
  graphdef, state = nnx.split(model)
  ids = jnp.asarray(random_ids(7, 2, 24))
  cache = model.init_cache(2, 24)
  sizes = []
  for n in (3, 12, 20, 24):  # crosses max_position_embeddings: the base changes, shapes do not
    valid = jnp.asarray(np.arange(24)[None, :] < np.array([[n], [24 - n]]))
    _forward(graphdef, state, ids, valid)
    _, _, cache = _extend(graphdef, state, ids[:, :1], valid[:, :1], cache)
    sizes.append((_forward._cache_size(), _extend._cache_size()))
  assert len(set(sizes)) == 1, sizes


def test_unstacked_layers_decode_the_same():
  """The per-layer layout for decoding gives the stacked model's logits, cached and not."""
  cfg = make_cfg('internlm2', max_pos=MAX_POS)
  stacked, unstacked = jax_model(cfg), jax_model(cfg)
  unstacked.unstack_layers()
  assert len(unstacked.layers) == cfg.num_layers
  ids = random_ids(5, 2, 10)
  valid = np.ones(ids.shape, bool)
  np.testing.assert_allclose(np.asarray(our_forward(unstacked, ids)['logits']),
                             np.asarray(our_forward(stacked, ids)['logits']), atol=1e-5)
  np.testing.assert_allclose(decode(unstacked, ids, valid, [6, 1, 3]),
                             decode(stacked, ids, valid, [6, 1, 3]), atol=1e-5)
