"""Training metrics: a JSONL log, TensorBoard scalars (the tfevents format written by hand, so no
TensorFlow/TensorBoard install is needed) and a one-line progress report with ETA.

tfevents: a sequence of records `u64 length | u32 masked-crc32c(length) | Event proto |
u32 masked-crc32c(proto)` (little endian). Protos used (field number: type):
Event{1: wall_time double, 2: step int64, 3: file_version string, 5: summary Summary},
Summary{1: repeated Value}, Value{1: tag string, 2: simple_value float}.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import time

# --- CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) ---------------------------------------
_CRC_TABLE = []
for _i in range(256):
  _c = _i
  for _ in range(8):
    _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
  _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- protobuf wire format (only what Event needs) ----------------------------------------------
def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # int64 negatives use ten bytes, as protobuf does
  out = bytearray()
  while True:
    b, n = n & 0x7F, n >> 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
  return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
  return _field(number, 2, _varint(len(data)) + data)


def encode_event(wall_time: float, step: int, *, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  msg = _field(1, 1, struct.pack('<d', wall_time)) + _field(2, 0, _varint(step))
  if file_version is not None:
    msg += _bytes_field(3, file_version.encode())
  if scalars:
    values = b''.join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack('<f', value)))
        for tag, value in scalars.items())
    msg += _bytes_field(5, values)
  return msg


def _parse_fields(data: bytes):
  """Yields (field number, wire type, value) of one message; value is int, float or bytes."""
  pos = 0

  def varint():
    nonlocal pos
    shift = result = 0
    while True:
      b = data[pos]
      pos += 1
      result |= (b & 0x7F) << shift
      shift += 7
      if not b & 0x80:
        return result

  while pos < len(data):
    key = varint()
    number, wire = key >> 3, key & 7
    if wire == 0:
      value = varint()
    elif wire == 1:
      value, pos = struct.unpack_from('<d', data, pos)[0], pos + 8
    elif wire == 5:
      value, pos = struct.unpack_from('<f', data, pos)[0], pos + 4
    elif wire == 2:
      n = varint()
      value, pos = data[pos:pos + n], pos + n
    else:
      raise ValueError(f'unsupported wire type {wire}')
    yield number, wire, value


def decode_event(data: bytes) -> dict:
  """{'wall_time', 'step', 'file_version'?, 'scalars': {tag: value}} of one Event proto."""
  event = {'wall_time': 0.0, 'step': 0, 'scalars': {}}
  for number, _, value in _parse_fields(data):
    if number == 1:
      event['wall_time'] = value
    elif number == 2:
      event['step'] = value - (1 << 64) if value >= 1 << 63 else value
    elif number == 3:
      event['file_version'] = value.decode()
    elif number == 5:
      for _, _, v in _parse_fields(value):
        fields = {n: x for n, _, x in _parse_fields(v)}
        event['scalars'][fields[1].decode()] = fields.get(2, 0.0)
  return event


def read_events(path: str) -> list[dict]:
  """Parses a tfevents file, checking both CRCs of every record."""
  events = []
  with open(path, 'rb') as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,), (crc,) = struct.unpack('<Q', header), struct.unpack_from('<I', data, pos + 8)
    if crc != masked_crc32c(header):
      raise ValueError(f'corrupt record length at byte {pos}')
    body = data[pos + 12:pos + 12 + length]
    (body_crc,) = struct.unpack_from('<I', data, pos + 12 + length)
    if body_crc != masked_crc32c(body):
      raise ValueError(f'corrupt record at byte {pos}')
    events.append(decode_event(body))
    pos += 16 + length
  return events


class TensorBoardWriter:
  """Scalars to `logdir`/events.out.tfevents.<time>.<host> (TensorBoard reads this directory)."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}')
    self._file = open(self.path, 'ab')
    self._write(encode_event(time.time(), 0, file_version='brain.Event:2'))

  def _write(self, event: bytes) -> None:
    header = struct.pack('<Q', len(event))
    self._file.write(header + struct.pack('<I', masked_crc32c(header)) + event +
                     struct.pack('<I', masked_crc32c(event)))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    self._write(encode_event(time.time(), int(step), scalars={k: float(v) for k, v in values.items()}))
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class MetricsWriter:
  """Each call appends one JSON line {'step', 'time', **scalars} to `workdir`/metrics.jsonl and
  the same scalars to TensorBoard under `workdir`/tb."""

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    self._jsonl = open(self.jsonl_path, 'a')
    self.tb = TensorBoardWriter(os.path.join(workdir, 'tb'))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), 'time': time.time(), **scalars}) + '\n')
    self._jsonl.flush()
    self.tb.scalars(step, scalars)

  def close(self) -> None:
    self._jsonl.close()
    self.tb.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m:02d}:{s:02d}'


class Progress:
  """`line(step, scalars)` -> 'step 12/100 [###.......] 12% loss 1.234 | 0.85 s/step | ETA 01:15'.
  The rate is measured from the first reported step on, so the compile does not skew the ETA."""

  def __init__(self, total_steps: int, *, width: int = 20, clock=time.monotonic):
    self.total, self.width, self.clock = total_steps, width, clock
    self._first: tuple[int, float] | None = None

  def line(self, step: int, scalars: dict[str, float] | None = None) -> str:
    now = self.clock()
    if self._first is None:
      self._first = (step, now)
    done = min(step / max(self.total, 1), 1.0)
    bar = '#' * int(done * self.width) + '.' * (self.width - int(done * self.width))
    text = f'step {step}/{self.total} [{bar}] {done:4.0%}'
    if scalars:
      text += ' ' + ' '.join(f'{k} {float(v):.4g}' for k, v in scalars.items())
    first_step, first_time = self._first
    if step > first_step:
      rate = (now - first_time) / (step - first_step)
      text += f' | {rate:.3g} s/step | ETA {_duration(rate * max(self.total - step, 0))}'
    return text
