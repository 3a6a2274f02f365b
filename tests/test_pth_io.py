"""Safe .pth loading: weights load, nested mmengine dicts flatten, code-running pickles are refused."""
import os
import pickle

import numpy as np
import pytest
import torch

from convert.pth_io import MergedReader, PthReader, UnsafeCheckpointError, open_checkpoint
from convert.safetensors_io import write_safetensors


class _Payload:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


@pytest.mark.parametrize('zipped', [True, False])
def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, zipped):
  marker = tmp_path / 'payload_ran'
  path = tmp_path / 'evil.pth'
  obj = {'state_dict': {'w': torch.ones(2)}, 'x': _Payload(marker)}
  if zipped:
    torch.save(obj, path)
  else:
    with open(path, 'wb') as f:
      pickle.dump(obj, f)
  with pytest.raises(UnsafeCheckpointError, match='refused to load'):
    PthReader(path)
  assert not marker.exists()


def test_mmengine_checkpoint_tensors_and_dtypes(tmp_path):
  w = torch.randn(3, 2)
  torch.save({'meta': {'epoch': 3}, 'state_dict': {'a.weight': w, 'b': w.bfloat16()}},
             tmp_path / 'c.pth')
  reader = open_checkpoint(tmp_path / 'c.pth')
  assert sorted(reader.keys()) == ['a.weight', 'b']
  np.testing.assert_array_equal(reader.get('a.weight'), w.numpy())
  assert reader.get('b').dtype.name == 'bfloat16' and reader.infos['b'].shape == (3, 2)
  np.testing.assert_array_equal(reader.get('b').astype(np.float32),
                                w.bfloat16().float().numpy())


def test_merged_reader_rejects_duplicates(tmp_path):
  write_safetensors(tmp_path / 'a.safetensors', {'x': np.zeros(2, np.float32)})
  torch.save({'x': torch.zeros(2)}, tmp_path / 'b.pth')
  with pytest.raises(ValueError, match='appears in two'):
    MergedReader([open_checkpoint(tmp_path / 'a.safetensors'), open_checkpoint(tmp_path / 'b.pth')])
