"""OMG-Seg conversion: golden head parity (original mmdet head), strict accounting, the --ov-embed
buffer, backbone tables vs transformers' ConvNextModel (both source namings), real-size header
checks from the manifests, export round trips."""
import pathlib
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lira_jax  # noqa: F401
from tests import convert_helpers
from configs import omg_seg as omg_seg_config
from convert import cli, keymap, omg_seg
from convert.pth_io import open_checkpoint
from convert.safetensors_io import CheckpointReader, write_safetensors
from lira_jax import param_io
from lira_jax.models.omg_seg import OMGSeg

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_cli(*args):
  return convert_helpers.run_cli('omg_seg', *args)


def run_main(*args):
  return convert_helpers.run_main(omg_seg.FAMILY, *args)


def _readme_atol(name: str, reference: np.ndarray) -> float:
  """../shared/golden/README.md's suggested bounds: 2e-5 continuous, 5e-5 mask logits, 2e-4 class
  logits, booleans exact. One exception: the deformable-encoder memories are
  held to the mask-logit bound (convert/omg_seg.py TOLERANCES says why)."""
  if reference.dtype == bool:
    return 0.0
  if 'mask_pred' in name or 'multi_scale_memory' in name:
    return 5e-5
  return 2e-4 if 'cls_pred' in name else 2e-5


@pytest.fixture(scope='module')
def golden(shared_dir):
  return pathlib.Path(shared_dir) / 'golden' / 'omg_seg_head_tiny'


@pytest.fixture(scope='module')
def converted(golden, tmp_path_factory):
  out = tmp_path_factory.mktemp('conv') / 'omg_seg_head_tiny'
  code, log = run_cli('--src', golden / 'omg_seg.pth', '--out', out, '--verify', golden)
  return code, log, out


def test_golden_convert_and_verify(converted, golden):
  code, log, out = converted
  assert code == 0, log
  assert 'verify PASSED' in log and 'accounting OK' in log
  assert 'not compared (not computed by this converter): none' in log
  assert 'decoder.cls_embed: not in any checkpoint' in log
  outputs = np.load(golden / 'outputs.npz')
  for name in outputs.files:
    line = next(l for l in log.splitlines() if l.startswith(name + ' '))
    assert float(line.split()[1]) <= _readme_atol(name, outputs[name]), line
  assert (out / 'config.json').is_file() and (out / 'params').is_dir()


def test_export_round_trip_is_bit_identical(converted, golden, tmp_path):
  code, log, out = converted
  assert code == 0, log
  code, log = run_main('--export', '--src', out, '--out', tmp_path)
  assert code == 0, log
  orig, back = open_checkpoint(golden / 'omg_seg.pth'), CheckpointReader(
      tmp_path / 'model.safetensors')
  convert_helpers.assert_bit_identical(orig, back)


def _save_pth(path, tensors):
  import torch
  state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
  torch.save({'meta': {'note': 'test'}, 'state_dict': state}, path)


def test_strict_accounting_lists_each_offender(golden, tmp_path):
  bad = tmp_path / 'bad'
  bad.mkdir()
  shutil.copy(golden / 'config.json', bad / 'config.json')
  reader = open_checkpoint(golden / 'omg_seg.pth')
  tensors = {k: np.array(reader.get(k)) for k in reader.keys()}
  del tensors['panoptic_head.transformer_decoder.layers.2.norms.1.bias']
  tensors['panoptic_head.pixel_decoder.extra_scale'] = np.zeros(3, np.float32)
  tensors['panoptic_head.query_feat.weight'] = np.zeros((13, 32), np.float32)
  _save_pth(bad / 'omg_seg.pth', tensors)
  out = tmp_path / 'out'
  code, log = run_main('--src', bad / 'omg_seg.pth', '--out', out)
  assert code != 0
  assert 'MISSING in source: panoptic_head.transformer_decoder.layers.2.norms.1.bias' in log
  assert 'UNUSED source tensor: panoptic_head.pixel_decoder.extra_scale' in log
  assert 'SHAPE mismatch: panoptic_head.query_feat.weight -> decoder.query_feat' in log
  assert 'UNSET target param: decoder.layers.norms_1.bias layers [2]' in log
  assert not out.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.out.')]


def test_ov_embed_sets_cls_embed(golden, tmp_path):
  import torch
  ov = np.load(golden / 'inputs.npz')['ov_class_embed']  # [K, P, D]
  torch.save({'embeddings': torch.from_numpy(ov)}, tmp_path / 'ov.pth')
  lines = []
  cfg, instances, target, reader, report = cli.check(
      omg_seg.FAMILY, golden / 'omg_seg.pth', extra={'ov_embed': tmp_path / 'ov.pth'},
      log=lines.append)
  assert report.ok, lines
  got = keymap.execute(instances, reader.get, target)['decoder.cls_embed']
  k, p, d = ov.shape
  want = np.zeros((d, k + 1, p), np.float32)  # [D, K+1, P], background prototypes zero
  for c in range(k):
    want[:, c, :] = ov[c].T
  np.testing.assert_array_equal(got, want)
  assert cfg.head.ov_protos == p and cfg.source.cls_embed == 'ov_embed'

  torch.save({'embeddings': torch.from_numpy(ov[:-1])}, tmp_path / 'ov_short.pth')
  code, log = run_main('--src', golden / 'omg_seg.pth', '--ov-embed', tmp_path / 'ov_short.pth',
                       '--check')
  assert code != 0
  assert 'SHAPE mismatch: ov_class_embed -> decoder.cls_embed' in log


# ------------------------------------------------------------------------- backbone tables
# transformers ConvNext names -> open_clip `visual.*` (timm) names.
_HF_TO_OPEN_CLIP = (
    (r'^embeddings\.patch_embeddings\.', 'visual.trunk.stem.0.'),
    (r'^embeddings\.layernorm\.', 'visual.trunk.stem.1.'),
    (r'^encoder\.stages\.(\d+)\.downsampling_layer\.', r'visual.trunk.stages.\1.downsample.'),
    (r'^encoder\.stages\.(\d+)\.layers\.', r'visual.trunk.stages.\1.blocks.'),
    (r'\.dwconv\.', '.conv_dw.'), (r'\.layernorm\.', '.norm.'), (r'\.pwconv1\.', '.mlp.fc1.'),
    (r'\.pwconv2\.', '.mlp.fc2.'), (r'\.layer_scale_parameter$', '.gamma'),
    (r'^layernorm\.', 'visual.trunk.head.norm.'),  # the pooled-feature norm = timm head.norm
)


def _open_clip_name(key):
  for pattern, repl in _HF_TO_OPEN_CLIP:
    key = re.sub(pattern, repl, key)
  return key


def _omg_seg_name(key):
  """open_clip visual.* -> OMG-Seg backbone.* (manifest prefix map)."""
  key = re.sub(r'^visual\.trunk\.stages\.(\d+)\.', lambda m: f'backbone.layer{int(m[1]) + 1}.', key)
  return (key.replace('visual.trunk.stem.', 'backbone.stem.')
          .replace('visual.trunk.head.', 'backbone.head.0.')
          .replace('visual.head.', 'backbone.head.1.'))


def _hf_convnext(cfg, seed):
  import torch
  from transformers import ConvNextConfig, ConvNextModel
  hf = ConvNextModel(ConvNextConfig(num_channels=3, patch_size=cfg.stem_patch,
                                    hidden_sizes=list(cfg.dims), depths=list(cfg.depths),
                                    hidden_act='gelu', layer_scale_init_value=1.0)).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if p.ndim > 1:
        p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(np.prod(p.shape[1:])))
      else:
        scale = float(name.endswith('weight') and 'norm' in name)
        p.copy_(scale + 0.2 * torch.randn(p.shape, generator=gen))
  return hf


def _convert_with_backbone(golden, tmp_path, naming):
  """A tiny random ConvNeXt (transformers), renamed to OMG-Seg `backbone.*` (in --src, next to a
  decoy CLIP file that must lose) or to open_clip `visual.*` (in --clip), plus the golden head and
  a stand-in text tower, converted with the tiny config.

  Returns (transformers model, {key: array} of every source tensor meant to be converted, out dir,
  log)."""
  cfg = omg_seg_config.get_config('tiny')
  hf = _hf_convnext(cfg.backbone, 0)
  visual = {_open_clip_name(k): v.detach().numpy() for k, v in hf.state_dict().items()}
  visual['visual.head.mlp.fc1.weight'] = np.ones((cfg.backbone.dims[-1],) * 2, np.float32)
  head = open_checkpoint(golden / 'omg_seg.pth')
  tensors = {k: np.array(head.get(k)) for k in head.keys()}
  text = {'token_embedding.weight': np.zeros((10, 4), np.float32),
          'transformer.resblocks.0.ln_1.weight': np.ones(4, np.float32),
          'logit_scale': np.zeros((), np.float32)}
  if naming == 'omg_seg':
    tensors.update({_omg_seg_name(k): v for k, v in visual.items()})
    clip = {k: v + 1.0 for k, v in visual.items()}
  else:
    clip = visual
  write_safetensors(tmp_path / 'omg.safetensors', tensors)
  write_safetensors(tmp_path / 'clip.safetensors', {**clip, **text})
  out = tmp_path / 'out'
  code, log = run_main('--src', tmp_path / 'omg.safetensors', '--clip',
                       tmp_path / 'clip.safetensors', '--out', out,
                       '--config', ROOT / 'configs/omg_seg.py:tiny')
  assert code == 0, log
  assert 'skipped deliberately (open_clip text tower' in log
  if naming == 'omg_seg':
    assert re.search(r'skipped deliberately \(visual.\*: superseded by backbone.\* of the OMG-Seg '
                     rf'checkpoint\): {len(visual)} tensors', log), log
  else:
    assert re.search(r'skipped deliberately \(CLIP image head[^)]*\): 3 tensors', log), log
    tensors.update(visual)
  converted = {k: v for k, v in tensors.items()
               if not re.match(r'(backbone\.head\.|visual\.(trunk\.)?head\.)', k)}
  return hf, converted, out, log


def _load(out):
  model = nnx.eval_shape(lambda: OMGSeg(param_io.load_config(out), rngs=nnx.Rngs(0)))
  param_io.assign(model, param_io.load_params(out))
  return model


def _pixels(size):
  import torch
  return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize('naming', ['omg_seg', 'open_clip'])
def test_backbone_tables_match_transformers_convnext(golden, tmp_path, naming):
  """The converted backbone equals transformers' ConvNextModel whichever naming fed it, and export
  writes back every converted source tensor bit for bit (skipped groups excepted)."""
  import torch
  hf, converted, out, _ = _convert_with_backbone(golden, tmp_path, naming)
  pixels = _pixels(64)
  with torch.no_grad():
    want = [h.numpy().transpose(0, 2, 3, 1)
            for h in hf(pixels, output_hidden_states=True).hidden_states[1:]]
  feats = nnx.jit(lambda m, x: m.backbone(x))(
      _load(out), jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1)))
  for got, ref in zip(feats, want, strict=True):
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4, rtol=0)

  code, log = run_main('--export', '--src', out, '--out', tmp_path / 'exp')
  assert code == 0, log
  back = CheckpointReader(tmp_path / 'exp' / 'model.safetensors')
  assert sorted(back.keys()) == sorted(converted)
  for k, v in converted.items():
    assert back.get(k).tobytes() == v.tobytes(), k


@pytest.mark.slow
def test_assembled_pixel_path_on_pixels(golden, tmp_path):
  """OMGSeg from pixels: backbone -> head -> CLIP tokens + prior, shapes from the config, tokens
  from transformers' stride-32 map."""
  import torch
  hf, _, out, _ = _convert_with_backbone(golden, tmp_path, 'open_clip')
  cfg = omg_seg_config.get_config('tiny')
  size = 128
  pixels = _pixels(size)
  with torch.no_grad():
    stride32 = hf(pixels).last_hidden_state.numpy().transpose(0, 2, 3, 1)
  res = nnx.jit(lambda m, x: m(x))(_load(out), jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1)))
  c, ratio, q = cfg.head.feat_channels, cfg.head.pixel_shuffle_down_ratio, cfg.head.num_queries
  grid = size // 32 // ratio
  assert res.mask_features.shape == (2, size // 4, size // 4, c)
  assert [m.shape[1] for m in res.memories] == [size // 32, size // 16, size // 8]
  assert res.decoder.mask_logits.shape == (cfg.head.dec_layers + 1, 2, q, size // 4, size // 4)
  assert res.clip_feature.shape == (2, grid * grid, ratio * ratio * cfg.backbone.dims[-1] + 2 * c)
  assert res.prior.attention_mask.shape == (2, q, grid * grid)
  tokens = np.asarray(res.clip_tokens).reshape(2, grid, grid, ratio, ratio, -1)
  np.testing.assert_allclose(tokens[:, :, :, 0, 0], stride32[:, ::ratio, ::ratio], atol=1e-4,
                             rtol=0)
  np.testing.assert_allclose(tokens[:, :, :, 1, 1], stride32[:, 1::ratio, 1::ratio], atol=1e-4,
                             rtol=0)


# ------------------------------------------------------------------------- real sizes


@pytest.fixture(scope='module')
def real_sources(shared_dir, tmp_path_factory):
  d = tmp_path_factory.mktemp('real')
  manifests = pathlib.Path(shared_dir) / 'golden' / 'manifests'
  convert_helpers.sparse_from_manifest(manifests / 'omg_seg_convl_pth.json', d / 'omg.safetensors')
  convert_helpers.sparse_from_manifest(manifests / 'omg_seg_convl_pth.json', d / 'head.safetensors',
                        lambda k: k.startswith('panoptic_head.'))
  convert_helpers.sparse_from_manifest(manifests / 'clip_convnext_large_d_320.json', d / 'clip.safetensors')
  return d


_SKIPPED = {'superseded': r'visual.\*: superseded by backbone.\* of the OMG-Seg checkpoint',
            'clip_head': r'CLIP image head [^)]*', 'text': r'open_clip text tower [^)]*'}


@pytest.mark.parametrize('src,clip,backbone,skipped', [
    ('omg', False, 'backbone: backbone.* of the OMG-Seg checkpoint', {'clip_head': 5}),
    ('omg', True, 'backbone: backbone.* of the OMG-Seg checkpoint',
     {'superseded': 345, 'clip_head': 5, 'text': 198}),
    ('head', True, 'backbone: visual.trunk.* of the CLIP checkpoint',
     {'clip_head': 5, 'text': 198}),
    ('head', False, 'backbone: none in the sources', {}),
])
def test_real_size_check_from_manifests(real_sources, src, clip, backbone, skipped):
  args = ['--src', real_sources / f'{src}.safetensors', '--check',
          '--config', ROOT / 'configs/omg_seg.py']
  if clip:
    args += ['--clip', real_sources / 'clip.safetensors']
  code, log = run_main(*args)
  assert code == 0, log
  assert 'accounting OK' in log and backbone in log
  assert 'decoder.cls_embed: not in any checkpoint' in log
  for group, count in skipped.items():
    assert re.search(rf'skipped deliberately \({_SKIPPED[group]}\): {count} tensors', log), log
  assert log.count('skipped deliberately') == len(skipped), log


def test_check_catches_wrong_config(real_sources):
  code, log = run_main('--src', real_sources / 'omg.safetensors', '--check', '--config',
                       ROOT / 'configs/omg_seg.py:tiny')
  assert code != 0
  assert 'SHAPE mismatch: panoptic_head.query_feat.weight -> decoder.query_feat' in log
  assert 'UNUSED source tensor: backbone.layer3.blocks.26.gamma' in log
