"""Stage-0 panoptic pre-training: greedy matching, the Mask2Former-style loss on hand-computed
cases, the synthetic scenes' panoptic targets, and (slow) the `internvl0` stage-0 loss."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs.common import stage_config
from lira_jax.data import pipeline, synthetic, synthetic_panoptic
from lira_jax.data.synthetic_tokenizer import world_tokenizer
from lira_jax.models.lira import LIRA
from lira_jax.nn.lora import path_str
from lira_jax.train import panoptic
from lira_jax.train import step as step_lib

WEIGHTS = ml_collections.ConfigDict(dict(cls_weight=2.0, mask_weight=5.0, dice_weight=5.0,
                                         no_object_weight=0.1))


def test_greedy_match_takes_the_cheapest_pair_first():
  cost = jnp.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
  # (q0, m1) = 0.1 goes first, then the cheapest left for m0 is q1 (0.2).
  np.testing.assert_array_equal(panoptic.greedy_match(cost, jnp.array([True, True])), [1, 0])
  # An invalid instance takes no query: m0 alone gets its cheapest, q1.
  assert int(panoptic.greedy_match(cost, jnp.array([True, False]))[0]) == 1


def test_panoptic_loss_on_a_hand_computed_case():
  # One step, one image, two queries over a 1x2 grid; classes {0, no-object}. Query 1 predicts
  # the instance's mask (logits +-2), query 0 is undecided (logits 0): query 1 is matched.
  mask_logits = jnp.array([[[[0.0, 0.0]], [[2.0, -2.0]]]])[None]  # [L, B, Q, h, w]
  class_logits = jnp.zeros((1, 1, 2, 2))  # uniform: every CE term is ln 2
  batch = dict(pan_masks=jnp.array([[[[1.0, 0.0]], [[0.0, 1.0]]]]),  # slot 1 is padding
               pan_classes=jnp.array([[0, 0]]), pan_valid=jnp.array([[True, False]]))
  parts = panoptic.panoptic_loss(class_logits, mask_logits, batch, WEIGHTS)
  # CE: matched query 1 -> class 0 (weight 1), query 0 -> no-object (weight 0.1); both ln 2, so
  # the weighted mean is ln 2.
  np.testing.assert_allclose(parts['cls'], 2.0 * math.log(2), rtol=1e-6)
  # BCE of the matched pair: softplus(-2) at both pixels (query 0 would cost ln 2).
  np.testing.assert_allclose(parts['bce'], 5.0 * math.log1p(math.exp(-2)), rtol=1e-5)
  # Dice: p = (s, 1 - s), s = sigmoid(2); 1 - (2s + 1) / (1 + 1 + 1) = (2 - 2s) / 3 (query 0
  # would cost 1/3).
  s = 1 / (1 + math.exp(-2))
  np.testing.assert_allclose(parts['dice'], 5.0 * (2 - 2 * s) / 3, rtol=1e-5)
  assert int(parts['num_instances']) == 1


def test_padding_slot_does_not_erase_a_match_to_query_0():
  # The instance fits query 0 (logits +-2 on its mask), query 1 is undecided: query 0 takes
  # class 0 and query 1 is no-object, whatever the padding slot's placeholder match is.
  mask_logits = jnp.array([[[[2.0, -2.0]], [[0.0, 0.0]]]])[None]
  class_logits = jnp.array([[[[3.0, 0.0], [0.0, 3.0]]]])  # both queries confident and right
  batch = dict(pan_masks=jnp.array([[[[1.0, 0.0]], [[0.0, 1.0]]]]),
               pan_classes=jnp.array([[0, 0]]), pan_valid=jnp.array([[True, False]]))
  parts = panoptic.panoptic_loss(class_logits, mask_logits, batch, WEIGHTS)
  # Each CE term is -log softmax([3, 0])[0] = log(1 + e^-3); weighted mean of equal terms.
  np.testing.assert_allclose(parts['cls'], 2.0 * math.log1p(math.exp(-3)), rtol=1e-5)


def test_query_class_loss_matches_the_queries_on_their_own_class():
  # Both masks are undecided (equal mask costs). The main term, with uniform class logits, would
  # give the instance to query 0 (first of a tie); classified alone, query 1 is confident of
  # class 0 and takes it: its CE is log(1 + e^-3), query 0's no-object CE ln 2 (weight 0.1).
  mask_logits = jnp.zeros((1, 1, 2, 1, 2))
  query_logits = jnp.array([[[[0.0, 0.0], [3.0, 0.0]]]])
  batch = dict(pan_masks=jnp.array([[[[1.0, 0.0]], [[0.0, 1.0]]]]),
               pan_classes=jnp.array([[0, 0]]), pan_valid=jnp.array([[True, False]]))
  weights = ml_collections.ConfigDict(dict(WEIGHTS, query_cls_weight=3.0))
  loss = panoptic.query_class_loss(query_logits, mask_logits, batch, weights)
  expected = (math.log1p(math.exp(-3)) + 0.1 * math.log(2)) / 1.1
  np.testing.assert_allclose(loss, 3.0 * expected, rtol=1e-5)


def test_panoptic_targets_of_a_scene():
  cfg = stage_config('configs/tiny_synthetic.py:smoke', 0)
  scene = synthetic.make_scene(np.random.default_rng(3), cfg.data.image_size)
  out = synthetic_panoptic.encode_panoptic(scene, cfg)
  n = len(scene.objects)
  assert out['pan_valid'].sum() == n and not out['pan_valid'][n:].any()
  # Each cell holds the covered fraction of its 4x4 pixels: the sums give back the areas.
  np.testing.assert_allclose(out['pan_masks'][:n].sum((1, 2)) * 16,
                             [o.mask.sum() for o in scene.objects], rtol=1e-6)
  names = [synthetic_panoptic.CLASSES[c] for c in out['pan_classes'][:n]]
  assert names == [f'{o.colour} {o.shape}' for o in scene.objects]


def test_factored_class_prototypes_follow_the_class_order():
  """Class k = (colour, shape) of synthetic_panoptic.CLASSES: unit codes whose cosine is 1/2
  when one attribute is shared and 0 when none is; a zero background; every prototype alike."""
  from lira_jax.models.mask_decoder import factored_class_prototypes
  protos = factored_class_prototypes(synthetic_panoptic.CLASS_FACTORS, 16, 2)
  assert protos.shape == (16, len(synthetic_panoptic.CLASSES) + 1, 2)
  np.testing.assert_array_equal(protos[..., 0], protos[..., 1])
  codes = protos[..., 0].T
  np.testing.assert_allclose(np.linalg.norm(codes[:-1], axis=-1), 1.0, atol=1e-6)
  assert not codes[-1].any()
  names = [c.split() for c in synthetic_panoptic.CLASSES]
  cos = codes[:-1] @ codes[:-1].T
  for a, (ca, sa) in enumerate(names):
    for b, (cb, sb) in enumerate(names):
      expected = 1.0 if a == b else 0.5 * ((ca == cb) + (sa == sb))
      assert abs(cos[a, b] - expected) < 1e-6, (names[a], names[b], cos[a, b])
  with pytest.raises(ValueError, match='ov_dim'):
    factored_class_prototypes((6, 5), 8, 1)


@pytest.mark.slow
def test_stage0_with_internvl0_trains_the_pixel_path_and_the_internvl_side():
  """`internvl0`: the stage-0 loss adds the InternVL model's text CE to the panoptic terms, and
  gradients reach the OMG-Seg head, the ViT and the LLM (the text part is not silently dropped)."""
  cfg = stage_config('configs/tiny_synthetic.py:smoke,internvl0', 0)
  cfg.train.batch_size = 2
  tok = world_tokenizer(synthetic.vocabulary_texts(), cfg.tokens)
  batch = next(iter(pipeline.train_dataset(cfg, tok, num_batches=1)))
  model = LIRA(cfg, rngs=nnx.Rngs(0))
  loss, parts, grads = step_lib.loss_and_grads(cfg)(
      model, {k: jnp.asarray(v) for k, v in batch.items()}, jax.random.key(0))
  assert float(parts['text']) > 0 and int(parts['num_tokens']) == int(
      (batch['labels'][:, 1:] >= 0).sum())
  np.testing.assert_allclose(float(loss), float(sum(parts[k] for k in ('text', 'cls', 'dice',
                                                                       'bce'))), rtol=1e-5)
  moved = {path_str(p).split('.')[0] for p, g in nnx.to_flat_state(grads)
           if float(jnp.abs(g[...]).max()) > 0}
  assert {'omg', 'vision', 'llm'} <= moved
