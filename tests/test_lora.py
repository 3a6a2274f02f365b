"""LoRA on the LLM: zero-B identity, merge/unmerge, parameter paths, a NumPy reference, trainable
selection by path pattern, and dropout inside the stacked-layer scan."""
import lira_jax  # noqa: F401  (first: disables eager sharding)

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.common import llm_config
from lira_jax.models.llm import LLM
from lira_jax.nn.lora import (LoRALinear, apply_lora, merge_lora, path_filter, path_str,
                              trainable_paths, unmerge_lora)

RANK, ALPHA = 4, 8.0
TARGETS = r'layers\.(wq|wk|wv|wo|w1|w2|w3)$|^lm_head$'
WRAPPED = ['layers.wq', 'layers.wk', 'layers.wv', 'layers.wo', 'layers.w1', 'layers.w3',
           'layers.w2', 'lm_head']
CFG = llm_config(family='internlm2', vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                 num_kv_heads=2, mlp_dim=48, norm_eps=1e-5, rope_theta=1e6,
                 rope_scaling={'type': 'dynamic', 'factor': 2.0}, max_position_embeddings=16,
                 tie_embeddings=False)
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 10)))


@nnx.jit
def logits(model):
  return model(model.embed_tokens(IDS), jnp.ones(IDS.shape, bool))


def lora_model(*, random_b: bool, dropout: float = 0.0):
  """(base LLM, a clone of it with LoRA on every linear layer)."""
  base = LLM(CFG, rngs=nnx.Rngs(0))
  model = nnx.clone(base)
  assert sorted(apply_lora(model, rank=RANK, alpha=ALPHA, dropout=dropout,
                           target_pattern=TARGETS, rngs=nnx.Rngs(1))) == sorted(WRAPPED)
  if random_b:
    for i, m in enumerate(adapters(model).values()):
      m.lora_b[...] = 0.3 * jax.random.normal(jax.random.key(i), m.lora_b.shape)
  return base, model


def adapters(model) -> dict[str, LoRALinear]:
  return {path_str(p): m for p, m in nnx.iter_graph(model) if isinstance(m, LoRALinear)}


def flat_params(model) -> dict[str, np.ndarray]:
  return {path_str(p): np.asarray(v[...])
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_zero_b_is_exactly_the_base_model():
  base, model = lora_model(random_b=False)
  np.testing.assert_array_equal(logits(model), logits(base))


def test_merge_matches_unmerged_and_unmerge_restores():
  base, model = lora_model(random_b=True)
  unmerged = logits(model)
  assert np.max(np.abs(unmerged - logits(base))) > 1e-2  # the adapters do change the output
  merge_lora(model)
  np.testing.assert_allclose(logits(model), unmerged, atol=1e-5, rtol=0)
  unmerge_lora(model)
  restored, original = flat_params(model), flat_params(base)
  for path, value in original.items():
    np.testing.assert_allclose(restored[path], value, atol=1e-6, rtol=0, err_msg=path)
  np.testing.assert_allclose(logits(model), unmerged, atol=1e-5, rtol=0)


def test_base_paths_kept_and_adapters_added_next_to_kernels():
  base, model = lora_model(random_b=False)
  base_paths, lora_paths = set(flat_params(base)), set(flat_params(model))
  assert base_paths <= lora_paths
  assert lora_paths - base_paths == {f'{p}.{n}' for p in WRAPPED for n in ('lora_a', 'lora_b')}
  layers, d, q = CFG.num_layers, CFG.hidden_size, CFG.num_heads * CFG.head_dim
  wq = model.layers.wq
  assert wq.lora_a.shape == (layers, d, RANK) and wq.lora_b.shape == (layers, RANK, q)
  assert wq.lora_a.get_metadata()['out_sharding'] == ('layers', 'embed', 'lora_rank')
  assert wq.lora_b.get_metadata()['out_sharding'] == ('layers', 'lora_rank', 'q_heads')
  head = model.lm_head
  assert head.lora_a.shape == (d, RANK) and head.lora_b.shape == (RANK, CFG.vocab_size)


def test_forward_matches_numpy_lora():
  base, model = lora_model(random_b=True)
  scale = ALPHA / RANK
  # One layer: W x + (alpha/r) B A x, written in torch layout (W f32[out, in]) with NumPy.
  head = model.lm_head
  x = np.random.default_rng(1).normal(size=(3, CFG.hidden_size)).astype(np.float32)
  w, a, b = (np.asarray(v[...]).T for v in (head.kernel, head.lora_a, head.lora_b))
  expected = (w @ x.T + scale * b @ (a @ x.T)).T
  np.testing.assert_allclose(head(jnp.asarray(x)), expected, atol=1e-5, rtol=0)
  # Whole model: the base LLM with every kernel replaced by W + (alpha/r) A B computed in NumPy.
  for path, m in adapters(model).items():
    merged = np.asarray(m.kernel[...]) + scale * np.matmul(m.lora_a[...], m.lora_b[...])
    target = base
    for name in path.split('.'):
      target = getattr(target, name)
    target.kernel[...] = jnp.asarray(merged)
  np.testing.assert_allclose(logits(model), logits(base), atol=1e-5, rtol=0)


def test_trainable_selection_by_path_pattern():
  _, model = lora_model(random_b=False)
  expected = sorted(f'{p}.{n}' for p in WRAPPED for n in ('lora_a', 'lora_b'))
  assert trainable_paths(model, [r'\.lora_(a|b)$']) == expected
  # The filter drives nnx.grad: gradients exist for the adapters only, and with B = 0 only the
  # B matrices receive a non-zero gradient.
  loss = lambda m: jnp.mean(logits(m) ** 2)
  grads = nnx.grad(loss, argnums=nnx.DiffState(0, path_filter([r'\.lora_(a|b)$'])))(model)
  flat = {path_str(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(grads)}
  assert sorted(flat) == expected
  for path, g in flat.items():
    assert (np.abs(g).max() > 0) == path.endswith('lora_b'), path


def test_dropout_inside_stacked_scan():
  _, model = lora_model(random_b=True, dropout=0.5)
  _, no_dropout = lora_model(random_b=True)
  nnx.update(no_dropout, nnx.state(model, nnx.Param))  # the dropout streams shifted the A inits
  model.eval()
  np.testing.assert_array_equal(logits(model), logits(no_dropout))
  model.train()
  assert np.max(np.abs(logits(model) - logits(no_dropout))) > 1e-3
  assert model.layers.wq.dropout.rngs.key.shape == (CFG.num_layers,)


def test_dropout_masks_change_between_calls():
  _, model = lora_model(random_b=True, dropout=0.5)
  logits(model)
  assert np.all(np.asarray(model.layers.wq.dropout.rngs.count[...]) > 0)
