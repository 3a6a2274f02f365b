"""InternVL2 conversion: golden parity, strict accounting, real-size header checks, export."""
import pathlib
import shutil

import numpy as np
import pytest

import lira_jax  # noqa: F401
from convert import internvl2, keymap
from convert.safetensors_io import CheckpointReader, write_safetensors
from tests import convert_helpers


def run_cli(*args):
  return convert_helpers.run_cli('internvl2', *args)


@pytest.fixture(scope='module')
def golden(shared_dir):
  return pathlib.Path(shared_dir) / 'golden' / 'internvl2_tiny'


@pytest.fixture(scope='module')
def converted(golden, tmp_path_factory):
  out = tmp_path_factory.mktemp('conv') / 'internvl2_tiny'
  code, log = run_cli('--src', golden, '--out', out, '--verify', golden, '--atol', '1e-4')
  return code, log, out


def test_golden_convert_and_verify(converted):
  code, log, out = converted
  assert code == 0, log
  assert 'verify PASSED' in log and 'accounting OK' in log
  for name in ('vision_last_hidden_state', 'vision_hidden_states', 'pixel_shuffle_out',
               'vit_embeds', 'inputs_embeds', 'logits', 'llm_hidden_states',
               'llm_last_hidden_state', 'long_logits', 'long_last_hidden_state'):
    line = next(l for l in log.splitlines() if l.startswith(name + ' '))
    assert float(line.split()[1]) <= 1e-4, line
  assert (out / 'config.json').is_file() and (out / 'params').is_dir()


def test_export_round_trip_is_bit_identical(converted, golden, tmp_path):
  code, log, out = converted
  assert code == 0, log
  code, log = run_cli('--export', '--src', out, '--out', tmp_path)
  assert code == 0, log
  convert_helpers.assert_bit_identical(CheckpointReader(golden / 'model.safetensors'),
                                       CheckpointReader(tmp_path / 'model.safetensors'))


def _corrupt_copy(golden: pathlib.Path, dst: pathlib.Path):
  """Golden checkpoint with one key removed, one extra key and one wrong shape."""
  dst.mkdir()
  for f in golden.iterdir():
    if f.name != 'model.safetensors':
      shutil.copy(f, dst / f.name)
  reader = CheckpointReader(golden / 'model.safetensors')
  tensors = {k: np.array(reader.get(k)) for k in reader.keys()}
  del tensors['language_model.model.layers.1.ffn_norm.weight']
  tensors['vision_model.encoder.layers.0.attn.extra_bias'] = np.zeros(3, np.float32)
  tensors['mlp1.1.bias'] = np.zeros(65, np.float32)
  write_safetensors(dst / 'model.safetensors', tensors)


def test_strict_accounting_lists_each_offender(golden, tmp_path):
  bad = tmp_path / 'bad'
  _corrupt_copy(golden, bad)
  out = tmp_path / 'out'
  code, log = run_cli('--src', bad, '--out', out)
  assert code != 0
  assert 'MISSING in source: language_model.model.layers.1.ffn_norm.weight' in log
  assert 'UNUSED source tensor: vision_model.encoder.layers.0.attn.extra_bias' in log
  assert 'SHAPE mismatch: mlp1.1.bias -> vision.mlp1.fc1.bias' in log
  assert 'UNSET target param: llm.layers.ffn_norm.scale layers [1]' in log
  assert not out.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.out.')]


def test_wqkv_grouped_split_round_trip():
  nh, kv, hd, d = 8, 2, 4, 16
  g = nh // kv
  w = np.arange((nh + 2 * kv) * hd * d, dtype=np.float32).reshape(-1, d)
  t = internvl2.internlm2_wqkv(nh, kv, hd)
  q, k, v = t.forward(w)
  # Query head h sits in group h // G at slot h % G; key/value head j at slots G, G+1 of group j.
  for h in range(nh):
    row = ((h // g) * (g + 2) + h % g) * hd
    np.testing.assert_array_equal(q[:, h * hd:(h + 1) * hd], w[row:row + hd].T)
  for j in range(kv):
    np.testing.assert_array_equal(k[:, j * hd:(j + 1) * hd], w[(j * (g + 2) + g) * hd:][:hd].T)
    np.testing.assert_array_equal(v[:, j * hd:(j + 1) * hd], w[(j * (g + 2) + g + 1) * hd:][:hd].T)
  (back,) = t.backward(q, k, v)
  np.testing.assert_array_equal(back, w)


@pytest.mark.parametrize('name,shards', [('internvl2_1b', 1), ('internvl2_2b', 1),
                                         ('internvl2_8b', 4)])
def test_real_size_check_from_manifest(shared_dir, tmp_path, name, shards):
  manifest = pathlib.Path(shared_dir) / 'golden' / 'manifests' / f'{name}.json'
  src = convert_helpers.sparse_from_manifest(
      manifest, tmp_path / (name if shards > 1 else f'{name}.safetensors'), shards=shards)
  code, log = run_cli('--src', src, '--check', '--config', f'configs/{name}.py')
  assert code == 0, log
  assert 'accounting OK' in log
  assert 'skipped deliberately' not in log


def test_check_catches_wrong_config(shared_dir, tmp_path):
  """The 2B checkpoint headers against the 8B config must fail loudly, by name."""
  src = convert_helpers.sparse_from_manifest(
      pathlib.Path(shared_dir) / 'golden' / 'manifests' / 'internvl2_2b.json',
      tmp_path / 'internvl2_2b.safetensors')
  code, log = run_cli('--src', src, '--check', '--config', 'configs/internvl2_8b.py')
  assert code != 0
  assert 'SHAPE mismatch: language_model.model.tok_embeddings.weight -> llm.embed.embedding' in log
  assert 'UNSET target param: llm.layers.wq.kernel layers [24, 25, 26, 27, 28, 29, 30, 31]' in log


def test_plan_reports_rule_to_unknown_param():
  rules = [keymap.r('a.weight', 'x.kernel', keymap.LINEAR)]
  source = {'a.weight': ((3, 2), np.dtype('float32'))}
  _, report = keymap.plan(rules, {}, source, {'y.kernel': ((2, 3), np.dtype('float32'))})
  assert not report.ok
  assert any('x.kernel' in u for u in report.unset_target)
  assert 'y.kernel' in report.unset_target
