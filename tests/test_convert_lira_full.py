"""The full LIRA conversion: a random tiny LIRA (with LoRA) written out in the released key formats
(InternVL2 dir + OMG-Seg file + LIRA .pth) converts back exactly; the [REJ] row is appended by
the mean rule; --merge-lora gives the same LLM outputs as the unmerged adapters; real-size key sets
(InternVL2 + OMG-Seg + CLIP + LIRA manifests) account to zero unused/missing/mis-shaped."""
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx

import lira_jax  # noqa: F401
from configs import common
from convert import cli, keymap, lira
from convert.safetensors_io import write_safetensors
from lira_jax import param_io
from lira_jax.models.lira import LIRA
from lira_jax.train.step import add_lora
from tests import convert_helpers

CFG = common.load_config('configs/lira_2b.py:tiny')


def tiny_model():
  model = LIRA(CFG, rngs=nnx.Rngs(0))
  add_lora(model, CFG, nnx.Rngs(1))
  for i, (_, node) in enumerate(nnx.iter_graph(model)):
    if hasattr(node, 'lora_b'):
      node.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(i), node.lora_b.shape)
  # LIRA's adapter sits on the fused wqkv: one A shared by the q, k and v parts.
  layers = model.llm.layers
  layers.wk.lora_a[...] = layers.wq.lora_a[...]
  layers.wv.lora_a[...] = layers.wq.lora_a[...]
  return model


@pytest.fixture(scope='module')
def released(tmp_path_factory):
  """The tiny model's params and the released-format files holding them (vocab without [REJ])."""
  model = nnx.jit(tiny_model)()
  params = {k: np.asarray(v) for k, v in param_io.flat_params(model).items()}
  cfg = ml_collections.ConfigDict(CFG.to_dict())
  cfg.conversion = dict(mode='full', merge_lora=False, file_vocab=CFG.model.llm.vocab_size - 1,
                        omg_source=dict(backbone='omg_seg', cls_embed='zeros'))
  tensors = dict(keymap.export(lira.full_rules(cfg), lira.counts(cfg), params))
  d = tmp_path_factory.mktemp('released')
  (d / 'internvl').mkdir()
  groups = {'internvl/model.safetensors': ('vision_model.', 'mlp1.', 'language_model.'),
            'omg_seg.safetensors': ('panoptic_head.', 'backbone.')}
  for name, prefixes in groups.items():
    write_safetensors(d / name, {k: v for k, v in tensors.items() if k.startswith(prefixes)})
  lira_keys = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()
               if k.startswith(('llm.', 'projector'))}
  torch.save(lira_keys, d / 'lira.pth')  # a flat state dict, as convert_deepspeed2pth writes
  return params, d


def convert(directory, out, merge=False):
  extra = dict(internvl=directory / 'internvl', omg_seg=directory / 'omg_seg.safetensors',
               clip=None, ov_embed=None, merge_lora=merge)
  return cli.convert(lira.FAMILY, directory / 'lira.pth', out, config_override=CFG, extra=extra,
                     log=lambda *_: None)


def test_full_conversion_round_trips_and_appends_rej_row(released, tmp_path):
  params, d = released
  got, cfg = convert(d, tmp_path / 'out')
  assert set(got) == set(params)
  appended = {'llm.embed.embedding': 0, 'llm.lm_head.kernel': 1, 'llm.lm_head.lora_b': 1}
  for k, want in params.items():
    if k in appended:
      axis = appended[k]
      old = np.take(want, np.arange(want.shape[axis] - 1), axis=axis)
      np.testing.assert_array_equal(np.take(got[k], np.arange(want.shape[axis] - 1), axis=axis),
                                    old, err_msg=k)
      new = np.take(got[k], [-1], axis=axis)
      expect = np.zeros_like(new) if k.endswith('lora_b') else old.mean(axis, keepdims=True)
      np.testing.assert_allclose(new, expect, atol=1e-6, err_msg=k)
    else:
      np.testing.assert_array_equal(got[k], want, err_msg=k)
  # The fused wqkv adapter came in as one lora_A: the three copies are identical.
  np.testing.assert_array_equal(got['llm.layers.wq.lora_a'], got['llm.layers.wk.lora_a'])
  assert cfg.conversion.file_vocab == CFG.model.llm.vocab_size - 1


def test_merge_lora_matches_adapters(released, tmp_path):
  _, d = released
  unmerged, _ = convert(d, tmp_path / 'a')
  merged, merged_cfg = convert(d, tmp_path / 'b', merge=True)
  assert merged_cfg.lora.rank == 0 and not any('lora' in k for k in merged)
  saved = param_io.load_config(tmp_path / 'b')
  assert saved.lora.rank == 0

  def llm_logits(params, with_lora):
    from lira_jax.models.llm import LLM
    llm = nnx.eval_shape(lambda: LLM(CFG.model.llm, rngs=nnx.Rngs(0)))
    if with_lora:
      from lira_jax.nn.lora import apply_lora
      apply_lora(llm, rank=CFG.lora.rank, alpha=CFG.lora.alpha, dropout=0.0,
                 target_pattern=r'^(layers\.(wq|wk|wv|wo|w1|w2|w3)|lm_head)$', rngs=nnx.Rngs(0))
    param_io.assign(llm, {k[len('llm.'):]: jnp.asarray(v) for k, v in params.items()
                          if k.startswith('llm.')})
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 200, (2, 12)))
    return np.asarray(llm(llm.embed_tokens(ids), jnp.ones(ids.shape, bool)))

  np.testing.assert_allclose(llm_logits(merged, False), llm_logits(unmerged, True), atol=1e-4)


@pytest.mark.parametrize('size', ['2b', '8b'])
def test_real_size_check_with_all_bases(shared_dir, tmp_path, size):
  manifests = pathlib.Path(shared_dir) / 'golden' / 'manifests'
  h = convert_helpers
  h.sparse_from_manifest(manifests / f'internvl2_{size}.json', tmp_path / 'internvl', shards=2)
  h.sparse_from_manifest(manifests / f'lira_{size}_pth.json', tmp_path / 'lira.safetensors')
  h.sparse_from_manifest(manifests / 'omg_seg_convl_pth.json', tmp_path / 'omg.safetensors')
  h.sparse_from_manifest(manifests / 'clip_convnext_large_d_320.json', tmp_path / 'clip.safetensors')
  code, log = h.run_main(lira.FAMILY, '--lira', tmp_path / 'lira.safetensors',
                         '--internvl', tmp_path / 'internvl', '--omg-seg', tmp_path / 'omg.safetensors',
                         '--clip', tmp_path / 'clip.safetensors', '--check',
                         '--config', f'configs/lira_{size}.py')
  assert code == 0, log
  assert 'accounting OK' in log and '1 row(s) appended' in log
  assert 'superseded by the LIRA file' in log and 'open_clip text tower' in log
