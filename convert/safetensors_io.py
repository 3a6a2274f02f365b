"""Safetensors reading (header-only or memory-mapped, sharded via index.json) and writing.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}} and the raw little-endian tensor bytes. Reading it directly lets `--check` look at
multi-GB checkpoints without touching tensor data and handles bfloat16 through ml_dtypes.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Iterator

import ml_dtypes
import numpy as np

DTYPES = {
    'F64': np.dtype('float64'), 'F32': np.dtype('float32'), 'F16': np.dtype('float16'),
    'BF16': np.dtype(ml_dtypes.bfloat16), 'I64': np.dtype('int64'), 'I32': np.dtype('int32'),
    'I16': np.dtype('int16'), 'I8': np.dtype('int8'), 'U8': np.dtype('uint8'),
    'BOOL': np.dtype('bool'),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class TensorInfo:
  __slots__ = ('name', 'dtype', 'shape', 'path', 'start', 'end')

  def __init__(self, name, dtype, shape, path, start, end):
    self.name, self.dtype, self.shape = name, dtype, tuple(shape)
    self.path, self.start, self.end = path, start, end


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
  """Parses one .safetensors header. Returns ({name: TensorInfo}, metadata)."""
  path = pathlib.Path(path)
  with open(path, 'rb') as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f'{path}: not a safetensors file (truncated header)')
    (n,) = struct.unpack('<Q', raw)
    if n > _MAX_HEADER:
      raise ValueError(f'{path}: implausible safetensors header size {n}')
    header = json.loads(f.read(n))
  base = 8 + n
  meta = header.pop('__metadata__', {}) or {}
  infos = {}
  for name, h in header.items():
    if h['dtype'] not in DTYPES:
      raise ValueError(f'{path}: tensor {name} has unsupported dtype {h["dtype"]}')
    start, end = h['data_offsets']
    infos[name] = TensorInfo(name, DTYPES[h['dtype']], h['shape'], path, base + start, base + end)
  return infos, meta


class CheckpointReader:
  """All tensors of a checkpoint directory or file: a single .safetensors, a directory with one
  `model.safetensors`, or shards listed by `*.safetensors.index.json` (the index is honoured:
  every tensor must be in the shard it names)."""

  def __init__(self, src: str | os.PathLike):
    src = pathlib.Path(src)
    self.infos: dict[str, TensorInfo] = {}
    if src.is_file():
      files = [src]
    elif src.is_dir():
      index = sorted(src.glob('*.safetensors.index.json'))
      if index:
        weight_map = json.loads(index[0].read_text())['weight_map']
        files = sorted({src / f for f in weight_map.values()})
      else:
        files = sorted(src.glob('*.safetensors'))
        weight_map = None
      if not files:
        raise FileNotFoundError(f'no *.safetensors files in {src}')
    else:
      raise FileNotFoundError(f'checkpoint {src} does not exist')
    for f in files:
      if not f.is_file():
        raise FileNotFoundError(f'shard {f} listed in the index is missing')
      infos, _ = read_header(f)
      for name, info in infos.items():
        if name in self.infos:
          raise ValueError(f'tensor {name} appears in more than one shard')
        self.infos[name] = info
    if src.is_dir() and weight_map is not None:
      wrong = [k for k, f in weight_map.items()
               if k not in self.infos or self.infos[k].path.name != pathlib.Path(f).name]
      if wrong:
        raise ValueError(f'index.json disagrees with the shards for {len(wrong)} tensors, '
                         f'e.g. {wrong[:3]}')
    self._maps: dict[pathlib.Path, np.memmap] = {}

  def keys(self) -> list[str]:
    return list(self.infos)

  def __contains__(self, name: str) -> bool:
    return name in self.infos

  def get(self, name: str) -> np.ndarray:
    """The tensor as a read-only array view over the memory-mapped file (no copy)."""
    info = self.infos[name]
    if info.path not in self._maps:
      self._maps[info.path] = np.memmap(info.path, dtype=np.uint8, mode='r')
    raw = self._maps[info.path][info.start:info.end]
    return raw.view(info.dtype).reshape(info.shape)


def write_safetensors(path: str | os.PathLike, tensors: Iterator[tuple[str, np.ndarray]] | dict,
                      metadata: dict[str, str] | None = None) -> None:
  """Writes tensors (name, array) in the given order; arrays are written as they come, so peak
  memory is one tensor beyond what the caller holds."""
  items = list(tensors.items()) if isinstance(tensors, dict) else list(tensors)
  for name, arr in items:
    if np.dtype(arr.dtype) not in DTYPE_NAMES:
      raise ValueError(f'cannot write {name}: dtype {arr.dtype} unsupported by safetensors')
  blob, _ = _header_blob([(n, a.shape, DTYPE_NAMES[np.dtype(a.dtype)]) for n, a in items],
                         metadata)
  with open(path, 'wb') as f:
    f.write(blob)
    for _, arr in items:
      f.write(np.ascontiguousarray(arr).tobytes())


def write_sparse_checkpoint(path: str | os.PathLike, shapes: dict[str, tuple[list[int], str]]) -> None:
  """Writes a safetensors file whose header lists `shapes` ({name: (shape, dtype name)}) and whose
  data region is a hole (sparse file: no disk, no memory). For header-only tests at real sizes."""
  blob, data_bytes = _header_blob([(n, shape, dt) for n, (shape, dt) in shapes.items()])
  with open(path, 'wb') as f:
    f.write(blob)
    f.truncate(len(blob) + data_bytes)


def _header_blob(entries, metadata=None) -> tuple[bytes, int]:
  """Length prefix + JSON header (padded to 8 bytes) for (name, shape, dtype name) entries laid
  out back to back; returns it with the total data size."""
  header: dict = {'__metadata__': dict(metadata or {'format': 'pt'})}
  offset = 0
  for name, shape, dtype in entries:
    nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
    header[name] = {'dtype': dtype, 'shape': list(shape), 'data_offsets': [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(',', ':')).encode()
  blob += b' ' * (-len(blob) % 8)
  return struct.pack('<Q', len(blob)) + blob, offset
