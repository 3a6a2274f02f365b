"""LIRA generation with in-loop ILVC against full forwards of the resulting sequences.

The tiny LIRA gets a scripted LLM (lira_jax.testing.scripted_llm), so generation follows a
known token script whatever the attention adds. Samples of different prompt lengths take different paths
(looping through `[SEG] <image_id> <p> red </p>` with ILVC, or stopping at once), so triggers
happen at different steps per sample. The reference is the training forward (LIRA.__call__) over
prompt + generated tokens with the region tiles of the generated masks spliced in."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lira_jax  # noqa: F401
from configs import common
from lira_jax import ilvc
from lira_jax.infer.generate import Sampling, choose_tokens, filter_logits
from lira_jax.infer.lira_generate import GenerateOptions, make_generate_fn
from lira_jax.models.lira import LIRA
from lira_jax.sequence import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from lira_jax.testing.scripted_llm import script_llm

CFG = common.load_config('configs/tiny_synthetic.py:smoke,stage2')
T = dict(CFG.tokens)
SPACE, RED, BLUE, LOOP, STOP = 3, 90, 91, 92, 93  # plain word ids of the tiny vocabulary
FORCED = (SPACE, T['p_start'])  # " <p>"
SCRIPT = {LOOP: T['seg'], T['seg']: T['image_id'], T['image_id']: T['p_start'],
          T['p_start']: RED, RED: T['p_end'], T['p_end']: T['seg'], STOP: BLUE, BLUE: T['im_end']}
N_NEW, MAX_SEG, MAX_REGIONS = 20, 6, 2
S, H = CFG.model.omg.image_size, CFG.model.llm.hidden_size


@pytest.fixture(scope='module')
def model():
  m = nnx.jit(lambda: LIRA(CFG, rngs=nnx.Rngs(0)))()
  script_llm(m.llm, SCRIPT)
  m.eval()
  return m


def prompt(last: int, words: int) -> list[int]:
  return [T['bos'], T['im_start'], *range(10, 10 + words), IMAGE_TOKEN_INDEX, 40, T['im_end'],
          T['im_start'], last]


def make_batch(lasts=(LOOP, STOP, LOOP), words=(6, 2, 3), hws=((128, 128), (100, 128), (128, 90)),
               text_len=24):
  b = len(lasts)
  rng = np.random.default_rng(1)
  ids = np.zeros((b, text_len), np.int32)
  valid = np.zeros((b, text_len), bool)
  for i, (last, n) in enumerate(zip(lasts, words)):
    p = prompt(last, n)
    ids[i, :len(p)], valid[i, :len(p)] = p, True
  s_tile = CFG.model.vision.image_size
  return dict(
      pixels=rng.normal(size=(b, S, S, 3)).astype(np.float32),
      tiles=rng.normal(size=(b, 1, s_tile, s_tile, 3)).astype(np.float32),
      tile_valid=np.ones((b, 1), bool), ids=ids, labels=np.full_like(ids, IGNORE_INDEX),
      text_valid=valid, image=rng.integers(0, 256, size=(b, S, S, 3)).astype(np.uint8),
      image_hw=np.asarray(hws, np.int32), ilvc=np.ones((b,), bool))


OPTS = GenerateOptions(max_new_tokens=N_NEW, max_seg=MAX_SEG, max_regions=MAX_REGIONS,
                       stop_ids=(T['im_end'],), forced_after_region=FORCED)
PROGRAMS = {}  # one compiled generator per model (batch sizes and ILVC flags are its inputs)


def run(model, batch):
  graphdef, state = nnx.split(model)
  if id(model) not in PROGRAMS:
    PROGRAMS[id(model)] = make_generate_fn(graphdef, OPTS)
  return jax.device_get(PROGRAMS[id(model)]((state,), {k: jnp.asarray(v) for k, v in batch.items()},
                                            jax.random.key(0)))


LOOP_ILVC = [T['seg'], T['image_id'], *FORCED, RED, T['p_end']]  # one region per loop
LOOP_PLAIN = [T['seg'], T['image_id'], T['p_start'], RED, T['p_end']]  # regions exhausted


@pytest.fixture(scope='module')
def generated(model):
  return run(model, make_batch())


def test_follows_the_script_with_ilvc_per_sample(generated):
  expected_loop = (LOOP_ILVC * MAX_REGIONS + LOOP_PLAIN * 4)[:N_NEW]
  for i in (0, 2):
    assert generated['tokens'][i].tolist() == expected_loop
    assert generated['regions'][i] == MAX_REGIONS
    assert not generated['finished'][i] and generated['lengths'][i] == N_NEW
  assert generated['tokens'][1, :2].tolist() == [BLUE, T['im_end']]
  assert (generated['tokens'][1, 2:] == 0).all()
  assert generated['finished'][1] and generated['lengths'][1] == 2
  assert generated['regions'][1] == 0
  # [SEG] slots: sample 0 has 4 [SEG]s within 20 tokens, at the script's steps.
  steps = [k for k, t in enumerate(expected_loop) if t == T['seg']]
  assert generated['seg_valid'][0].sum() == len(steps)
  assert generated['seg_step'][0, :len(steps)].tolist() == steps
  assert not generated['seg_valid'][1].any() and not generated['masks'][1].any()


def full_forward_batch(batch, generated):
  """Prompt + generated tokens as one training-style sequence, each triggered <image_id>
  followed by the region tile of the mask of the [SEG] before it."""
  b = len(batch['ids'])
  text_len = 64
  s_tile = CFG.model.vision.image_size
  ids = np.zeros((b, text_len), np.int32)
  labels = np.full((b, text_len), IGNORE_INDEX, np.int32)
  valid = np.zeros((b, text_len), bool)
  regions = np.zeros((b, CFG.seq.max_regions, s_tile, s_tile, 3), np.float32)
  region_valid = np.zeros((b, CFG.seq.max_regions), bool)
  region_fn = jax.jit(jax.vmap(lambda im, m, hw: ilvc.normalize_tile(
      ilvc.region_pixels(im, m, hw, s_tile))))
  for i in range(b):
    p = batch['ids'][i, batch['text_valid'][i]].tolist()
    answer, used = [], 0
    for t in generated['tokens'][i, :generated['lengths'][i]].tolist():
      answer.append(t)
      if t == T['image_id'] and used < generated['regions'][i]:
        answer.append(IMAGE_TOKEN_INDEX)
        used += 1
    seq = p + answer
    ids[i, :len(seq)], valid[i, :len(seq)] = seq, True
    labels[i, len(p):len(seq)] = answer
    for r in range(used):  # region r came from [SEG] slot r (one region per loop)
      regions[i, r] = np.asarray(region_fn(batch['image'][i:i + 1],
                                           generated['masks'][i:i + 1, r],
                                           batch['image_hw'][i:i + 1]))[0]
      region_valid[i, r] = True
  return dict(batch, ids=ids, labels=labels, text_valid=valid, regions=regions,
              region_valid=region_valid)


def test_matches_full_forward_of_the_generated_sequence(model, generated):
  batch = full_forward_batch(make_batch(), generated)
  out = jax.jit(lambda g, s, x: nnx.merge(g, s)(x))(*nnx.split(model),
                                                     {k: jnp.asarray(v) for k, v in batch.items()})
  plan = jax.device_get(out.plan)
  logits = np.asarray(out.logits)
  for i in range(len(batch['ids'])):
    n = int(generated['seg_valid'][i].sum())
    assert plan.seg_valid[i].sum() == n
    pos = plan.seg_index[i, :n]
    np.testing.assert_allclose(generated['seg_logits'][i, :n], logits[i, pos], atol=1e-4)
  b = len(batch['ids'])
  # The config's mask refiner works on each slot's stride-4 logits: the forward's go through it
  # the same way (it sees the same pixels and the same coarse logits).
  ref_masks = jax.jit(lambda g, s, x, p: nnx.merge(g, s).refine_seg_logits(
      x, p, jnp.repeat(jnp.arange(b, dtype=jnp.int32), CFG.seq.max_seg)))(
          *nnx.split(model), out.seg_mask_logits[-1], jnp.asarray(batch['pixels']))
  ref_masks = np.asarray(ref_masks).reshape(b, CFG.seq.max_seg,
                                            *generated['mask_logits'].shape[2:])
  k = min(CFG.seq.max_seg, MAX_SEG)  # the training buffer holds the first k slots
  used = generated['seg_valid'][:, :k]
  assert used.sum() >= 4
  np.testing.assert_allclose(generated['mask_logits'][:, :k][used], ref_masks[:, :k][used],
                             atol=1e-4)


def test_batch_of_one_equals_the_batch(model, generated):
  full = make_batch()
  for i in range(3):
    one = run(model, {k: v[i:i + 1] for k, v in full.items()})
    np.testing.assert_array_equal(one['tokens'][0], generated['tokens'][i])
    np.testing.assert_array_equal(one['masks'][0], generated['masks'][i])
    np.testing.assert_allclose(one['seg_logits'][0], generated['seg_logits'][i], atol=1e-5)


def test_ilvc_off_stops_at_image_id(model, generated):
  """Switched off for sample 0 only (a run-time flag: the same program): it stops at
  <image_id>, the others run exactly as with ILVC on."""
  out = run(model, dict(make_batch(), ilvc=np.asarray([False, True, True])))
  assert out['tokens'][0, :2].tolist() == [T['seg'], T['image_id']]
  assert out['lengths'][0] == 2 and out['finished'][0]
  assert out['regions'][0] == 0 and out['seg_valid'][0].sum() == 1
  np.testing.assert_array_equal(out['tokens'][1:], generated['tokens'][1:])
  np.testing.assert_array_equal(out['masks'][1:], generated['masks'][1:])


def test_filter_logits_top_k_top_p():
  logits = np.log(np.asarray([[0.5, 0.05, 0.25, 0.2]], np.float32))
  keep = lambda s: np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), s)))[0].tolist()
  assert keep(Sampling(temperature=1.0, top_k=2)) == [True, False, True, False]
  # Nucleus 0.7: 0.5 then 0.25 crosses it; 0.5 alone does not reach it.
  assert keep(Sampling(temperature=1.0, top_p=0.7)) == [True, False, True, False]
  assert keep(Sampling(temperature=1.0, top_p=0.5)) == [True, False, False, False]
  assert keep(Sampling(temperature=1.0, top_p=0.96)) == [True, True, True, True]
  t = np.asarray(filter_logits(jnp.asarray(logits), Sampling(temperature=2.0)))
  np.testing.assert_allclose(t, logits / 2.0, rtol=1e-6)


def test_sampling_draws_from_the_filtered_distribution():
  logits = jnp.log(jnp.asarray([[0.5, 0.05, 0.25, 0.2]] * 4000, jnp.float32))
  draws = np.asarray(choose_tokens(logits, jax.random.key(3), Sampling(temperature=1.0, top_k=2)))
  freq = np.bincount(draws, minlength=4) / len(draws)
  np.testing.assert_allclose(freq, [2 / 3, 0, 1 / 3, 0], atol=0.03)
  greedy = choose_tokens(logits[:1], jax.random.key(0), Sampling())
  assert int(greedy[0]) == 0
