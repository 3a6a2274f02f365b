"""The assembled tiny LIRA: one compile for varying targets/tiles/queries, gradients only into the
trainable selection, [REJ] gives no mask loss, ILVC slots act only through their tokens, a mixed
batch equals per-sample runs, and stage 1 trains only the projectors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lira_jax  # noqa: F401
from configs import common
from lira_jax.models.lira import LIRA
from lira_jax.nn.lora import path_str
from lira_jax.testing.lira_batch import make_batch
from lira_jax.train import objective, step as step_lib

CFG = common.load_config('configs/lira_2b.py:tiny')


def as_jnp(batch):
  return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.fixture(scope='module')
def model():
  m = nnx.jit(lambda: LIRA(CFG, rngs=nnx.Rngs(0)))()
  step_lib.add_lora(m, CFG, nnx.Rngs(1))
  # Non-zero LoRA B so that every adapter path carries signal in the checks below.
  for _, node in nnx.iter_graph(m):
    if hasattr(node, 'lora_b'):
      node.lora_b[...] = 0.01 * jax.random.normal(jax.random.key(2), node.lora_b.shape)
  m.eval()  # LoRA dropout off: the comparisons below need a deterministic forward
  return m


TRACES = []


@pytest.fixture(scope='module')
def grad_fn():
  """loss_and_grads with every trace of the objective counted."""
  def counted(*args, **kwargs):
    TRACES.append(1)
    return objective.lira_loss(*args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(step_lib, 'lira_loss', counted)
    yield step_lib.loss_and_grads(CFG)


def test_compiles_once_for_different_targets_tiles_regions(model, grad_fn):
  rng = np.random.default_rng(0)
  variants = [dict(num_tiles=(2, 3), num_regions=(1, 0), answers=('referring', 'gres')),
              dict(num_tiles=(1, 1), num_regions=(0, 0), answers=('gres', 'gres')),
              dict(num_tiles=(3, 2), num_regions=(1, 1), answers=('referring', 'referring'))]
  losses, traces_before = [], len(TRACES)
  for v in variants:
    loss, parts, _ = grad_fn(model, as_jnp(make_batch(CFG, rng, **v)), jax.random.key(0))
    losses.append(float(loss))
    assert np.isfinite(float(loss))
  assert len(TRACES) - traces_before <= 1  # at most the first call traces
  assert len(set(losses)) == 3


def test_gradients_only_into_trainable_selection(model, grad_fn):
  batch = as_jnp(make_batch(CFG, np.random.default_rng(1)))
  _, _, grads = grad_fn(model, batch, jax.random.key(0))
  paths = {path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
  trainable = step_lib.trainable_filter(CFG)
  all_params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  expected = {path_str(p) for p, v in all_params.items() if trainable(p, v)}
  assert set(paths) == expected
  assert not any(k.startswith(('vision.', 'omg.')) for k in paths)
  assert not any(k.startswith('llm.layers.') and not k.endswith(('lora_a', 'lora_b'))
                 for k in paths)
  for group in ('projector.model.', 'projector.model_feat.', 'projector.cross_beforellm.',
                'text2vision.', 'llm.embed.', 'llm.lm_head.kernel', 'llm.layers.wq.lora_b'):
    norm = sum(float(np.abs(g).sum()) for k, g in paths.items() if k.startswith(group))
    assert norm > 0, group


def test_rej_targets_give_no_mask_loss(model, grad_fn):
  batch = make_batch(CFG, np.random.default_rng(2), answers=('gres', 'gres'))
  # Turn every [SEG] label into [REJ]: all targets absent.
  t = CFG.tokens
  for key in ('ids', 'labels'):
    batch[key] = np.where(batch[key] == t.seg, t.rej, batch[key])
  _, parts, _ = grad_fn(model, as_jnp(batch), jax.random.key(0))
  assert float(parts['num_seg']) == 0
  assert float(parts['dice']) == 0 and float(parts['bce']) == 0
  assert float(parts['text']) > 0


def test_ilvc_slots_act_only_through_region_tokens(model, grad_fn):
  batch = make_batch(CFG, np.random.default_rng(3), num_regions=(1, 0))
  base, _, _ = grad_fn(model, as_jnp(batch), jax.random.key(0))
  unused = dict(batch, regions=batch['regions'].copy())
  unused['regions'][0, 1] += 5.0  # an invalid slot of sample 0
  unused['regions'][1] += 5.0  # sample 1 has no valid slot
  same, _, _ = grad_fn(model, as_jnp(unused), jax.random.key(0))
  assert float(same) == float(base)
  used = dict(batch, regions=batch['regions'].copy())
  used['regions'][0, 0] += 5.0  # the local image of sample 0's target
  changed, _, _ = grad_fn(model, as_jnp(used), jax.random.key(0))
  assert abs(float(changed) - float(base)) > 1e-4


def test_internvl_alone_reads_the_tiles_not_the_pixel_path(model):
  """The stage-0 InternVL forward: its logits move with the tiles, not with the OMG-Seg input."""
  batch = make_batch(CFG, np.random.default_rng(5), num_tiles=(1, 2))
  forward = nnx.jit(lambda m, b: m.internvl_logits(b)[0])
  base = np.asarray(forward(model, as_jnp(batch)))
  pixels = dict(batch, pixels=batch['pixels'] + 3.0)
  np.testing.assert_array_equal(np.asarray(forward(model, as_jnp(pixels))), base)
  tiles = dict(batch, tiles=batch['tiles'].copy())
  tiles['tiles'][1, 0] += 3.0
  moved = np.abs(np.asarray(forward(model, as_jnp(tiles))) - base).max(axis=(1, 2))
  assert moved[0] == 0 and moved[1] > 1e-3


@pytest.mark.slow
def test_mixed_batch_equals_per_sample(model):
  batch = make_batch(CFG, np.random.default_rng(4), num_tiles=(2, 3), num_regions=(1, 0))
  forward = nnx.jit(lambda m, b: m(b))
  both = forward(model, as_jnp(batch))
  for i in range(2):
    one = forward(model, as_jnp({k: v[i:i + 1] for k, v in batch.items()}))
    valid = np.asarray(one.plan.valid[0])
    np.testing.assert_array_equal(np.asarray(both.plan.valid[i]), valid)
    np.testing.assert_allclose(np.asarray(both.logits[i])[valid], np.asarray(one.logits[0])[valid],
                               atol=1e-4, rtol=1e-4)
    m = CFG.seq.max_seg
    seg = np.asarray(one.seg_valid)
    np.testing.assert_array_equal(np.asarray(both.seg_valid[i * m:(i + 1) * m]), seg)
    np.testing.assert_allclose(np.asarray(both.seg_mask_logits[:, i * m:(i + 1) * m])[:, seg],
                               np.asarray(one.seg_mask_logits)[:, seg], atol=1e-3, rtol=1e-4)


@pytest.mark.slow
def test_stage1_trains_projectors_with_projection_loss():
  cfg = common.load_config('configs/lira_2b.py:tiny,stage1')
  model = nnx.jit(lambda: LIRA(cfg, rngs=nnx.Rngs(0)))()
  assert model.projector.cross_beforellm is None and not step_lib.add_lora(model, cfg, nnx.Rngs(1))
  loss, parts, grads = step_lib.loss_and_grads(cfg)(
      model, as_jnp(make_batch(cfg, np.random.default_rng(6))), jax.random.key(0))
  assert 'proj' in parts and 'dice' not in parts and float(parts['proj']) > 0
  np.testing.assert_allclose(float(loss), float(parts['text'] + parts['proj']), rtol=1e-6)
  paths = {path_str(p) for p, _ in nnx.to_flat_state(grads)}
  assert paths and all(p.startswith(('projector.', 'text2vision.')) for p in paths)
