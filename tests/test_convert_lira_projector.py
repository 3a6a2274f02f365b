"""LIRA projector-part conversion: golden parity through the command line (the original
ProjectorModel_OMG_LLaVA + projector_text2vision outputs), strict accounting and verification on
corrupted copies, the .pth route, the export round trip, and real-size key sets from the
manifests."""
import json
import pathlib
import re
import shutil

import numpy as np
import pytest
import torch

import lira_jax  # noqa: F401
from tests import convert_helpers
from convert import lira
from convert.safetensors_io import CheckpointReader, write_safetensors, write_sparse_checkpoint

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN_ATOL = 1e-4
ROW = re.compile(r'^(\S+)\s+([0-9.e+-]+)\s+([0-9.e+-]+)')


def run_cli(*args):
  return convert_helpers.run_cli('lira', *args)


def run_main(*args):
  return convert_helpers.run_main(lira.FAMILY, *args)


def verified_errors(log: str) -> dict[str, float]:
  return {m.group(1): float(m.group(2)) for m in map(ROW.match, log.splitlines())
          if m and m.group(1) != 'array'}


@pytest.fixture(scope='module')
def golden(shared_dir):
  return pathlib.Path(shared_dir) / 'golden' / 'lira_projector_tiny'


def golden_copy(golden, directory, edit):
  """A copy of the golden set whose model.safetensors went through edit({key: array})."""
  directory.mkdir()
  for name in ('config.json', 'inputs.npz', 'outputs.npz'):
    shutil.copy(golden / name, directory / name)
  reader = CheckpointReader(golden / 'model.safetensors')
  tensors = {k: np.array(reader.get(k)) for k in reader.keys()}
  edit(tensors)
  write_safetensors(directory / 'model.safetensors', tensors)
  return directory


def test_golden_verify_command(golden, tmp_path):
  code, log = run_cli('--lira', golden / 'model.safetensors', '--verify', golden)
  assert code == 0, log
  errors = verified_errors(log)
  outputs = set(np.load(golden / 'outputs.npz').files)
  assert set(errors) == outputs, log  # every golden array is computed and compared
  assert max(errors.values()) <= GOLDEN_ATOL, log
  print('\n'.join(f'{k}: {v:.2e}' for k, v in errors.items()))


def test_out_then_export_round_trip(golden, tmp_path):
  code, log = run_main('--lira', golden / 'model.safetensors', '--out', tmp_path / 'conv',
                       '--verify', golden)
  assert code == 0 and 'verify PASSED' in log, log
  code, log = run_main('--lira', tmp_path / 'conv', '--export', '--out', tmp_path / 'exp')
  assert code == 0, log
  got, want = (CheckpointReader(p) for p in (tmp_path / 'exp' / 'model.safetensors',
                                             golden / 'model.safetensors'))
  assert sorted(got.keys()) == sorted(want.keys())
  for k in want.keys():
    np.testing.assert_array_equal(got.get(k), want.get(k), err_msg=k)


def test_pth_source(golden, tmp_path):
  """The released format: a flat {name: tensor} torch.save file."""
  reader = CheckpointReader(golden / 'model.safetensors')
  directory = tmp_path / 'pth'
  directory.mkdir()
  shutil.copy(golden / 'config.json', directory / 'config.json')
  torch.save({k: torch.from_numpy(np.array(reader.get(k))) for k in reader.keys()},
             directory / 'lira.pth')
  code, log = run_main('--lira', directory / 'lira.pth', '--verify', golden)
  assert code == 0 and 'verify PASSED' in log, log


def test_corrupted_weights_fail_verify(golden, tmp_path):
  def nudge(t):
    t['projector.model.cross_beforellm.norm2.bias'][3] += 1e-3

  directory = golden_copy(golden, tmp_path / 'nudged', nudge)
  code, log = run_main('--lira', directory / 'model.safetensors', '--verify', directory)
  assert code == 1 and 'verify FAILED' in log, log
  errors = verified_errors(log)
  # Only the SEFE outputs move; everything before the cross attention still matches.
  assert errors['visual_tokens_0'] > 1e-5 and errors['visual_tokens_1'] > 1e-5, log
  assert max(errors[k] for k in ('clip_tokens', 'query_tokens_all', 'seg_queries')) < 1e-5, log


def test_swapped_in_proj_rows_fail_verify(golden, tmp_path):
  """A converter splitting in_proj as [k; q; v] would still have matching shapes."""
  def swap(t):
    w = t['projector.model.cross_beforellm.multihead_attn.in_proj_weight']
    h = w.shape[1]
    t['projector.model.cross_beforellm.multihead_attn.in_proj_weight'] = np.concatenate(
        [w[h:2 * h], w[:h], w[2 * h:]])

  directory = golden_copy(golden, tmp_path / 'swapped', swap)
  code, log = run_main('--lira', directory / 'model.safetensors', '--verify', directory)
  assert code == 1 and 'verify FAILED' in log, log


@pytest.mark.parametrize('edit, expect', [
    (lambda t: t.pop('projector.model.seperate_embed.weight'),
     'MISSING in source: projector.model.seperate_embed.weight'),
    (lambda t: t.update({'projector.model.rm_query_embed.weight': np.zeros((1, 64), np.float32)}),
     'UNUSED source tensor: projector.model.rm_query_embed.weight'),
    (lambda t: t.update({'projector_text2vision.model.2.weight': np.zeros((32, 31), np.float32)}),
     'SHAPE mismatch'),
])
def test_strict_accounting(golden, tmp_path, edit, expect):
  directory = golden_copy(golden, tmp_path / 'edited', edit)
  code, log = run_main('--lira', directory / 'model.safetensors', '--verify', directory,
                       '--out', tmp_path / 'never')
  assert code == 1 and expect in log and 'accounting FAILED' in log, log
  assert not (tmp_path / 'never').exists()


@pytest.mark.parametrize('size', ['2b', '8b'])
def test_real_key_sets(size, tmp_path):
  """Header-only --check of a sparse file with the released LIRA .pth key set against the real
  config: the projector part accounts exactly; the LLM part is skipped by name (stage 2). The
  stage-1 config has no cross_beforellm, so the stage-2 file is refused."""
  manifest = json.loads((ROOT.parent / 'shared' / 'golden' / 'manifests' /
                         f'lira_{size}_pth.json').read_text())
  path = tmp_path / 'lira.safetensors'
  write_sparse_checkpoint(path, {k: (v['shape'], 'F32') for k, v in manifest['tensors'].items()})
  config = ROOT / 'configs' / f'lira_{size}.py'
  code, log = run_main('--lira', path, '--check', '--config', config)
  assert code == 0 and 'accounting OK' in log, log
  num_llm = sum(k.startswith('llm.') for k in manifest['tensors'])
  assert f'projector-only conversion): {num_llm} tensors' in log, log
  code, log = run_main('--lira', path, '--check', '--config', f'{config}:stage1')
  assert code == 1 and log.count('UNUSED source tensor: projector.model.cross_beforellm.') == 8, log
