"""Safe reading of PyTorch `.pth` checkpoints (mmengine / open_clip / LIRA) and one reader
interface over `.pth` and `.safetensors` files.

`.pth` files are opened with `torch.load(weights_only=True, mmap=True)`: the restricted unpickler
refuses any pickle that tries to build arbitrary objects or call functions (a `__reduce__` payload
is never executed), and memory mapping keeps peak memory at one tensor while converting.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from convert.safetensors_io import CheckpointReader, TensorInfo

_STATE_KEYS = ('state_dict', 'model', 'module')


class UnsafeCheckpointError(ValueError):
  pass


def _torch():
  try:
    import torch
  except ImportError as e:  # torch is a conversion/test extra, not a runtime dependency
    raise ImportError('reading .pth files needs PyTorch: pip install -r tests/requirements.txt'
                      ) from e
  return torch


def _flatten_state(obj, prefix=''):
  torch = _torch()
  for k, v in obj.items():
    if isinstance(v, torch.Tensor):
      yield prefix + k, v
    elif isinstance(v, dict):
      yield from _flatten_state(v, f'{prefix}{k}.')


class PthReader:
  """Tensors of a `.pth` file (a flat state dict, or one nested under 'state_dict'/'model')."""

  def __init__(self, path: str | os.PathLike):
    torch = _torch()
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f'checkpoint {self.path} does not exist')
    obj = self._safe_load(torch)
    if isinstance(obj, torch.Tensor):  # a bare tensor file (e.g. OMG-Seg's OV class embeddings)
      obj = {'tensor': obj}
    if not isinstance(obj, dict):
      raise ValueError(f'{self.path}: expected a dict of tensors, got {type(obj).__name__}')
    for key in _STATE_KEYS:
      if key in obj and isinstance(obj[key], dict):
        obj = obj[key]
        break
    self._tensors = dict(_flatten_state(obj))
    if not self._tensors:
      raise ValueError(f'{self.path}: no tensors found')
    self.infos = {k: TensorInfo(k, _np_dtype(v.dtype), tuple(v.shape), self.path, 0, 0)
                  for k, v in self._tensors.items()}

  def _safe_load(self, torch):
    import pickle
    mmap = zipfile_like(self.path)  # legacy (non-zip) files cannot be memory-mapped
    try:
      return torch.load(self.path, map_location='cpu', weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
      lines = str(e).splitlines()
      why = next((l.strip() for l in lines if 'Unsupported' in l or 'GLOBAL' in l), lines[0])
      raise UnsafeCheckpointError(
          f'{self.path}: refused to load: the pickle asks to build objects or call functions '
          f'that a weights-only checkpoint never needs ({why[:200]})') from None

  def keys(self) -> list[str]:
    return list(self._tensors)

  def __contains__(self, name):
    return name in self._tensors

  def get(self, name: str) -> np.ndarray:
    t = self._tensors[name]
    torch = _torch()
    if t.dtype == torch.bfloat16:
      import ml_dtypes
      return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def zipfile_like(path: pathlib.Path) -> bool:
  import zipfile
  return zipfile.is_zipfile(path)


def _np_dtype(torch_dtype) -> np.dtype:
  import ml_dtypes
  name = str(torch_dtype).removeprefix('torch.')
  return np.dtype(ml_dtypes.bfloat16) if name == 'bfloat16' else np.dtype(name)


def open_checkpoint(path: str | os.PathLike):
  """A reader for a `.pth`/`.pt`/`.bin` (torch) file or a safetensors file/directory."""
  path = pathlib.Path(path)
  if path.suffix in ('.pth', '.pt', '.bin'):
    return PthReader(path)
  return CheckpointReader(path)


class MergedReader:
  """Several readers seen as one key space; a key present twice is an error."""

  def __init__(self, readers):
    self.infos, self._owner = {}, {}
    for reader in readers:
      for k, info in reader.infos.items():
        if k in self.infos:
          raise ValueError(f'tensor {k} appears in two of the given checkpoints')
        self.infos[k], self._owner[k] = info, reader

  def keys(self):
    return list(self.infos)

  def __contains__(self, name):
    return name in self.infos

  def get(self, name):
    return self._owner[name].get(name)
