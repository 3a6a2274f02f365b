"""The sharded trainer on the tiny LIRA objective: 1 device and a (2, 2, 2) mesh of 8 simulated
devices give the same losses and each step function traces once; a NaN batch skips the update
bit-exactly; checkpoints restore bit-exactly (same next loss), resume from the latest step and
keep the last N; metrics JSONL / tfevents files parse back; cfg.optim.lr_scale multiplies the
updates of the params it names."""
import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import lira_jax  # noqa: F401
from configs import common
from lira_jax import sharding
from lira_jax.nn.layers import Linear
from lira_jax.testing.lira_batch import make_batch
from lira_jax.train import metrics, sharded_step
from lira_jax.train import step as step_lib
from lira_jax.train.checkpoint import Checkpointer
from lira_jax.train.objective import lira_loss

CFG = common.load_config('configs/lira_2b.py:tiny')
CFG.optim.grad_accum = 2
CFG.optim.lr = 1e-3  # large enough that 3 steps move the loss visibly
MICRO = 4  # micro-batch: divisible by data·fsdp = 4
TRACES = []


def batch(seed):
  rng = np.random.default_rng(seed)
  n = MICRO * CFG.optim.grad_accum
  return make_batch(CFG, rng, num_tiles=rng.integers(1, 4, n), num_regions=rng.integers(0, 3, n),
                    answers=tuple(rng.choice(['referring', 'gres'], n)))


def is_key(x):
  return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def host(tree):
  """numpy copy (PRNG keys as their raw data), safe from donation."""
  return jax.tree.map(lambda x: np.array(jax.random.key_data(x) if is_key(x) else x), tree)


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, host(a), host(b))


@pytest.fixture(scope='module')
def run():
  def counted(*args, **kwargs):
    TRACES.append(1)
    return lira_loss(*args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sharded_step, 'lira_loss', counted)
    mesh1 = sharding.make_mesh({'data': 1}, devices=jax.devices()[:1])
    mesh8 = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
    graphdef, state1, sh1 = sharded_step.build_train_state(CFG, mesh1, seed=0)
    _, abstract8, sh8 = sharded_step.abstract_train_state(CFG, mesh8, seed=0)
    # Same initial values, placed by the logical rules, through host copies: a device-to-device
    # put may share device 0's buffers with state1, which the 1-device step donates.
    state8 = jax.tree.map(lambda x, s: jax.device_put(x, s), host(state1), sh8)
    state8 = state8.replace(frozen=jax.tree.map(
        lambda x, a: jax.random.wrap_key_data(x) if is_key(a) else x, state8.frozen, state1.frozen))
    kw = dict(total_steps=10, seed=0)
    yield dict(graphdef=graphdef, abstract8=abstract8, mesh8=mesh8,
               step1=sharded_step.make_sharded_train_step(CFG, mesh1, graphdef, sh1, **kw),
               step8=sharded_step.make_sharded_train_step(CFG, mesh8, graphdef, sh8, **kw),
               state1=state1, state8=state8)


@pytest.mark.slow
def test_one_and_eight_devices_same_losses_one_trace_each(run):
  losses1, losses8 = [], []
  for i in range(3):
    b = batch(i)
    run['state1'], m1 = run['step1'](run['state1'], b)
    run['state8'], m8 = run['step8'](run['state8'], b)
    losses1.append(float(m1['loss']))
    losses8.append(float(m8['loss']))
    assert int(m1['skipped']) == int(m8['skipped']) == 0
    assert float(m8['grad_norm']) > 0 and float(m8['lr']) > 0
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5, atol=1e-5)
  assert len(set(losses1)) == 3 and np.all(np.isfinite(losses1))
  assert len(TRACES) == 2  # one trace of the objective per step function (scan traces once)
  leaf = run['state8'].trainable['llm']['embed']['embedding'].get_value()
  assert len(leaf.sharding.device_set) == 8 and leaf.sharding.spec[1] == 'fsdp'
  assert int(run['state8'].step) == 3


@pytest.mark.slow
def test_nan_batch_skips_the_update(run):
  b = batch(10)
  b['pixels'][1, 3, 3, 0] = np.nan
  before = host(run['state8'])
  run['state8'], m = run['step8'](run['state8'], b)
  assert int(m['skipped']) == 1 and not np.isfinite(float(m['loss']))
  after = host(run['state8'])
  assert_trees_equal(after.trainable, before.trainable)
  assert_trees_equal(after.opt_state, before.opt_state)
  assert int(run['state8'].skipped) == 1 and int(run['state8'].step) == 4


@pytest.mark.slow
def test_checkpoint_restore_resume_and_keep_last_n(run, tmp_path):
  ckpt = Checkpointer(str(tmp_path), max_to_keep=2)
  state = run['state8']
  for step in (2, 3, 4):
    ckpt.save(step, state, {'position': step, 'epoch': 0})
  ckpt.wait()
  assert ckpt.all_steps() == [3, 4]

  # A fresh manager and only the abstract state: what a restarted process has.
  fresh = Checkpointer(str(tmp_path), max_to_keep=2)
  restored, data_state = fresh.restore_or(run['abstract8'], init_fn=lambda: 1 / 0)
  assert data_state == {'position': 4, 'epoch': 0}
  assert_trees_equal(restored, state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(run['abstract8'])):
    assert got.sharding == want.sharding
  b = batch(20)
  _, m_restored = run['step8'](restored, b)
  run['state8'], m_original = run['step8'](run['state8'], b)
  assert float(m_restored['loss']) == float(m_original['loss'])
  assert len(TRACES) == 2  # the restored state reuses the compiled step
  fresh.close()
  ckpt.close()


def test_metrics_files_parse_back(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path))
  rows = [{'loss': 2.5, 'lr': 1e-4, 'grad_norm': 0.75}, {'loss': 1.25, 'lr': 2e-4, 'skipped': 1}]
  for step, row in enumerate(rows, start=1):
    writer.write(step, row)
  writer.close()
  logged = metrics.read_jsonl(writer.jsonl_path)
  assert [r['step'] for r in logged] == [1, 2]
  assert [{k: r[k] for k in row} for r, row in zip(logged, rows)] == rows
  events = metrics.read_events(writer.tb.path)
  assert events[0]['file_version'] == 'brain.Event:2'
  assert [e['step'] for e in events[1:]] == [1, 2]
  for event, row in zip(events[1:], rows):
    assert event['scalars'].keys() == row.keys()
    np.testing.assert_allclose(list(event['scalars'].values()), list(row.values()), rtol=1e-7)
  assert metrics.masked_crc32c(b'') == 0xA282EAD8  # crc32c('') = 0, then the mask's offset
  assert metrics.crc32c(b'123456789') == 0xE3069283  # the standard CRC-32C check value


def test_progress_line_reports_eta():
  now = iter([0.0, 10.0])
  progress = metrics.Progress(100, width=10, clock=lambda: next(now))
  assert progress.line(0) == 'step 0/100 [..........]   0%'
  line = progress.line(10, {'loss': 1.5})
  assert line == 'step 10/100 [#.........]  10% loss 1.5 | 1 s/step | ETA 01:30'


def test_lr_scale_multiplies_the_matching_params_updates():
  class Two(nnx.Module):
    def __init__(self):
      self.head = Linear(3, 2, axes=(None, None), rngs=nnx.Rngs(0))
      self.region_classifier = nnx.List([Linear(3, 2, axes=(None, None), rngs=nnx.Rngs(1))])

  params = nnx.state(Two(), nnx.Param)
  grads = jax.tree.map(lambda p: np.full(p.shape, 0.1, np.float32), params)
  optim = ml_collections.ConfigDict(dict(lr=1e-3, warmup_ratio=0.0, warmup_start_factor=1.0,
                                         clip_norm=1.0, b1=0.9, b2=0.999, weight_decay=0.0))
  plain, _ = step_lib.make_tx(ml_collections.ConfigDict(dict(optim=optim)), 10)
  optim.lr_scale = ((r'^region_classifier\.', 5.0),)
  scaled, _ = step_lib.make_tx(ml_collections.ConfigDict(dict(optim=optim)), 10)
  base, _ = plain.update(grads, plain.init(params), params)
  out, _ = scaled.update(grads, scaled.init(params), params)
  ratio = jax.tree.map(lambda a, b: np.asarray(a) / np.asarray(b), out, base)
  np.testing.assert_allclose(ratio['region_classifier'][0]['kernel'].value, 5.0, rtol=1e-6)
  np.testing.assert_allclose(ratio['head']['kernel'].value, 1.0, rtol=1e-6)
  assert optax.tree.norm(base) > 0
