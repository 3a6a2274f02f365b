"""SEFE (visual projector + pre-LLM cross attention) and the [SEG] projector against an independent
PyTorch reference written here: the released per-image forward (nn.Linear / nn.GELU /
nn.Embedding / nn.LayerNorm / nn.MultiheadAttention, lira_reference.md §4) at tiny random sizes
with a different number of tiles and of valid queries per image."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import lira_jax  # noqa: F401
from lira_jax import param_io
from lira_jax.models.sefe import SEFE
from lira_jax.models.seg_projector import TextToVision

H, HEADS, QC, CC, RATIO = 32, 4, 6, 5, 2  # hidden, heads, query channels, CLIP channels, shuffle
G, Q, N_TOK, T_MAX = 9, 7, 4, 3  # prior cells, queries, InternVL tokens per tile, tile buffer
TILES = (1, 3, 2)  # tiles of each image in the batch
FEAT, QW = CC * RATIO ** 2, 2 * QC


def sefe_cfg(**overrides):
  cfg = dict(query_channels=QC, clip_feat_channel=CC, pixel_shuffle_ratio=RATIO, projector_depth=2,
             cross_heads=HEADS, add_cross=True, onlyomg_pretrain=False, variant='released')
  return ml_collections.ConfigDict({**cfg, **overrides})


class TorchProjector(nn.Module):
  """The released Naive_Proj + CrossAttentionLayer_Pre, written out per image."""

  def __init__(self):
    super().__init__()
    self.query_proj = nn.Linear(QW, FEAT)
    self.model = nn.Sequential(nn.Linear(FEAT, H), nn.GELU(), nn.Linear(H, H))
    self.model_feat = nn.Sequential(nn.Linear(FEAT + QW, H), nn.GELU(), nn.Linear(H, H))
    self.seperate_embed = nn.Embedding(1, H)
    self.seperate_embed_internvl = nn.Embedding(1, H)
    self.norm1, self.norm2 = nn.LayerNorm(H), nn.LayerNorm(H)
    self.multihead_attn = nn.MultiheadAttention(H, HEADS)
    with torch.no_grad():
      for p in self.parameters():  # non-trivial norms and biases
        p.add_(0.1 * torch.randn_like(p))

  def cross(self, tgt, memory):
    memory = self.norm2(memory)[:, None]
    return tgt + self.multihead_attn(self.norm1(tgt)[:, None], memory, memory)[0][:, 0]

  def enhance_semantic(self, s, pixel_side):  # the 'paper' variant
    pixel_side = self.norm1(pixel_side)[:, None]
    return s + self.multihead_attn(self.norm2(s)[:, None], pixel_side, pixel_side)[0][:, 0]

  def forward(self, clip_feature, query_feat, attention_mask, s, stage, variant='released'):
    q = self.model(self.query_proj(query_feat))[attention_mask.sum(-1) < attention_mask.shape[-1]]
    p = self.model_feat(clip_feature)
    seps = self.seperate_embed_internvl.weight, self.seperate_embed.weight
    if stage == 1:
      return torch.cat([seps[0], p, seps[1], q])
    if variant == 'paper':
      s = self.enhance_semantic(s, torch.cat([p, q]))
    else:
      q, p = self.cross(q, s), self.cross(p, s)
    return torch.cat([s, seps[0], p, seps[1], q])

  def jax_params(self):
    """{param path: array} for SEFE (in_proj rows [W_q; W_k; W_v])."""
    t = {k: v.detach().numpy() for k, v in self.state_dict().items()}
    out = {'seperate_embed': t['seperate_embed.weight'],
           'seperate_embed_internvl': t['seperate_embed_internvl.weight']}
    for src, dst in (('query_proj', 'query_proj'), ('model.0', 'model.fc0'),
                     ('model.2', 'model.fc2'), ('model_feat.0', 'model_feat.fc0'),
                     ('model_feat.2', 'model_feat.fc2'),
                     ('multihead_attn.out_proj', 'cross_beforellm.out_proj')):
      out[dst + '.kernel'], out[dst + '.bias'] = t[src + '.weight'].T, t[src + '.bias']
    for j, name in enumerate('qkv'):
      rows = slice(j * H, (j + 1) * H)
      out[f'cross_beforellm.{name}_proj.kernel'] = t['multihead_attn.in_proj_weight'][rows].T
      out[f'cross_beforellm.{name}_proj.bias'] = t['multihead_attn.in_proj_bias'][rows]
    for norm in ('norm1', 'norm2'):
      out[f'cross_beforellm.{norm}.scale'] = t[norm + '.weight']
      out[f'cross_beforellm.{norm}.bias'] = t[norm + '.bias']
    return out


def make_sefe(reference, **cfg):
  model = SEFE(sefe_cfg(**cfg), H, rngs=nnx.Rngs(0))
  params = reference.jax_params()
  if not model.cross_beforellm:
    params = {k: v for k, v in params.items() if not k.startswith('cross_beforellm.')}
  param_io.assign(model, {k: jnp.asarray(v) for k, v in params.items()})
  return model


def make_inputs(seed, tiles=TILES):
  """Random features; attention_mask from random cell owners (image 0: a single owner, image 1:
  every query owns a cell, others random); InternVL tokens padded to T_MAX tiles with garbage."""
  rng = np.random.default_rng(seed)
  b = len(tiles)
  owners = rng.integers(0, Q, (b, G))
  owners[0] = rng.integers(Q)
  owners[1 % b] = np.concatenate([rng.permutation(Q), rng.integers(0, Q, G - Q)])
  attention_mask = owners[:, None, :] != np.arange(Q)[None, :, None]
  internvl = rng.normal(size=(b, T_MAX * N_TOK, H)).astype(np.float32)
  internvl_valid = np.arange(T_MAX * N_TOK)[None, :] < np.asarray(tiles)[:, None] * N_TOK
  internvl[~internvl_valid] = 1e3 * rng.normal(size=(int((~internvl_valid).sum()), H))
  return dict(clip_feature=rng.normal(size=(b, G, FEAT + QW)).astype(np.float32),
              query_feat=rng.normal(size=(b, Q, QW)).astype(np.float32),
              attention_mask=attention_mask, internvl=internvl, internvl_valid=internvl_valid)


def torch_sequences(reference, inputs, stage, variant='released'):
  with torch.no_grad():
    return [reference(*(torch.from_numpy(inputs[k][i])
                        for k in ('clip_feature', 'query_feat', 'attention_mask')),
                      torch.from_numpy(inputs['internvl'][i][inputs['internvl_valid'][i]]),
                      stage, variant).numpy()
            for i in range(len(inputs['clip_feature']))]


@jax.jit
def _forward(model, clip_feature, query_feat, attention_mask, internvl, internvl_valid):
  return model(clip_feature, query_feat, ~attention_mask.all(-1), internvl, internvl_valid)


def run_sefe(model, inputs, with_internvl=True):
  return _forward(model, inputs['clip_feature'], inputs['query_feat'], inputs['attention_mask'],
                  inputs['internvl'] if with_internvl else None,
                  inputs['internvl_valid'] if with_internvl else None)


@pytest.fixture(scope='module')
def reference():
  torch.manual_seed(0)
  return TorchProjector().eval()


def assert_matches(block, want):
  for i, seq in enumerate(want):
    tokens, valid = np.asarray(block.tokens[i]), np.asarray(block.valid[i])
    assert valid.sum() == len(seq)
    np.testing.assert_allclose(tokens[valid], seq, atol=1e-5, rtol=0)  # slot order
    assert not tokens[~valid].any()
  compact = block.compact()
  for i, seq in enumerate(want):
    assert np.asarray(compact.valid[i]).tolist() == [True] * len(seq) + [False] * (
        compact.valid.shape[1] - len(seq))
    np.testing.assert_allclose(np.asarray(compact.tokens[i, :len(seq)]), seq, atol=1e-5, rtol=0)


def test_stage2_per_image_sequences(reference):
  inputs = make_inputs(1)
  want = torch_sequences(reference, inputs, stage=2)
  assert [len(w) for w in want] == [
      t * N_TOK + G + 2 + int((~inputs['attention_mask'][i].all(-1)).sum())
      for i, t in enumerate(TILES)]
  block = run_sefe(make_sefe(reference), inputs)
  # Fixed slots: S InternVL slots, separator, G pixel tokens, separator, min(Q, G) query slots.
  assert block.tokens.shape == (len(TILES), T_MAX * N_TOK + G + 2 + min(Q, G), H)
  assert_matches(block, want)


def test_padded_tiles_do_not_change_outputs(reference):
  model, inputs = make_sefe(reference), make_inputs(2)
  other = dict(inputs, internvl=np.where(inputs['internvl_valid'][..., None], inputs['internvl'],
                                         -7.0).astype(np.float32))
  a, b = run_sefe(model, inputs), run_sefe(model, other)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


def test_stage1_order(reference):
  inputs = make_inputs(3)
  want = torch_sequences(reference, inputs, stage=1)
  model = make_sefe(reference, add_cross=False, onlyomg_pretrain=True)
  assert model.cross_beforellm is None
  assert_matches(run_sefe(model, inputs, with_internvl=False), want)
  # The released stage-1 path feeds no InternVL tokens even when they were computed.
  assert_matches(run_sefe(model, inputs), want)


def test_paper_variant(reference):
  inputs = make_inputs(4)
  want = torch_sequences(reference, inputs, stage=2, variant='paper')
  assert_matches(run_sefe(make_sefe(reference, variant='paper'), inputs), want)
  released = torch_sequences(reference, inputs, stage=2)
  assert max(np.abs(w - r).max() for w, r in zip(want, released)) > 1e-2


def test_one_compile_for_any_tiles_and_queries(reference):
  model = make_sefe(reference)
  traces = []

  @jax.jit
  def run(m, *args):
    traces.append(1)
    return m(*args)

  for seed, tiles in ((5, (1, 3, 2)), (6, (3, 1, 1)), (7, (2, 2, 3))):
    inputs = make_inputs(seed, tiles)
    block = run(model, inputs['clip_feature'], inputs['query_feat'],
                ~inputs['attention_mask'].all(-1), inputs['internvl'], inputs['internvl_valid'])
    assert_matches(block, torch_sequences(reference, inputs, stage=2))
  assert len(traces) == 1


def test_text2vision():
  torch.manual_seed(1)
  ref = nn.Sequential(nn.Linear(H, 2 * QC), nn.GELU(), nn.Linear(2 * QC, 2 * QC)).eval()
  t = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  model = TextToVision(H, 2 * QC, rngs=nnx.Rngs(0))
  param_io.assign(model, {f'fc{i}.kernel': jnp.asarray(t[f'{i}.weight'].T) for i in (0, 2)}
                  | {f'fc{i}.bias': jnp.asarray(t[f'{i}.bias']) for i in (0, 2)})
  x = np.random.default_rng(0).normal(size=(2, 5, H)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
  got = jax.jit(lambda m, x: m(x))(model, x)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)
