"""A deterministic, random-access mixture of data sources, and a wrapper that skips bad records.

Both are plain classes with `__len__` / `__getitem__` (grain's RandomAccessDataSource protocol),
so `grain.MapDataset.source(Mixture(...))` works like any source and grain keeps doing the
batching, epochs, sharding and checkpointed iteration.

Mixture. The released recipes mix datasets in two ways, and both are expressed here:
  repeats  LIRA's CombineDataset concatenates its datasets, each listed `repeats` times
           (RefCOCO / RefCOCO+ / RefCOCOg x3, GranD-f x10): source i counts r_i * n_i slots;
  weights  GSVA draws a dataset by its sample rate (sem_seg : refer_seg : vqa : reason_seg as
           9 : 3 : 3 : 1), whatever its size.
Without weights, source i gets exactly r_i * n_i of the `length` (default Σ r_i * n_i) slots, so
with the default length every record appears exactly r_i times. With weights, it gets w_i / Σ w
of them (largest remainders, ties to the earlier source; a source without a weight gets
none). Within a source, its k-th slot reads
record perm_i[k mod r_i n_i] mod n_i, perm_i a seeded permutation, so a source is cycled through
(each record r_i times) before any record repeats more. The slots of all sources are then
shuffled together with the same seed (shuffle=False keeps them in source order).

SkippingSource. A corrupt image or annotation must not end an epoch: reading record i (and the
optional `transform`, e.g. image decoding) is tried on i, i + 1, ... (cyclically) until one
succeeds; every failure is counted. Wrap each source before mixing so that a skip stays within
its source and the proportions hold. Counters are per process: with grain worker processes,
each worker counts its own skips.
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np


def apportion(total: int, shares: Sequence[float]) -> list[int]:
  """Integers summing to total, proportional to shares (largest remainders, earlier first)."""
  shares = np.asarray(shares, np.float64)
  if total < 0 or shares.size == 0 or (shares < 0).any() or shares.sum() <= 0:
    raise ValueError(f'cannot apportion {total} over shares {shares.tolist()}')
  exact = total * shares / shares.sum()
  counts = np.floor(exact).astype(np.int64)
  order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
  for i in order[:total - int(counts.sum())]:
    counts[i] += 1
  return counts.tolist()


class Mixture:
  """Sources mixed by repeats and optional weights (see the module docstring)."""

  def __init__(self, sources: Mapping[str, Sequence], *, repeats: Mapping[str, int] | None = None,
               weights: Mapping[str, float] | None = None, length: int | None = None,
               seed: int = 0, shuffle: bool = True):
    self.names = list(sources)
    self.sources = [sources[n] for n in self.names]
    unknown = set(repeats or {}).union(weights or {}) - set(self.names)
    if unknown:
      raise KeyError(f'repeats / weights for unknown sources {sorted(unknown)}')
    sizes = [len(s) for s in self.sources]
    repeats = [int((repeats or {}).get(n, 1)) for n in self.names]
    virtual = [r * n for r, n in zip(repeats, sizes)]
    if any(r < 1 for r in repeats) or any(v == 0 for v in virtual):
      raise ValueError(f'every source needs repeats >= 1 and records: sizes {sizes}, '
                       f'repeats {repeats}')
    length = sum(virtual) if length is None else int(length)
    shares = [float(weights.get(n, 0.0)) for n in self.names] if weights else virtual
    self.counts = dict(zip(self.names, apportion(length, shares)))
    rng = np.random.default_rng(seed)
    self._source = np.repeat(np.arange(len(self.names)), list(self.counts.values()))
    self._record = np.empty(length, np.int64)
    start = 0
    for size, v, count in zip(sizes, virtual, self.counts.values()):
      k = np.arange(count) % v
      self._record[start:start + count] = (rng.permutation(v)[k] if shuffle else k) % size
      start += count
    if shuffle:
      order = rng.permutation(length)
      self._source, self._record = self._source[order], self._record[order]

  def __len__(self) -> int:
    return len(self._record)

  def locate(self, index: int) -> tuple[str, int]:
    """(source name, record index) of mixture slot `index`."""
    return self.names[self._source[index]], int(self._record[index])

  def __getitem__(self, index: int):
    return self.sources[self._source[index]][int(self._record[index])]


class SkippingSource:
  """Reads source[i] (then transform), moving on to the next record on any exception."""

  def __init__(self, source: Sequence, transform: Callable[[Any], Any] | None = None,
               max_tries: int | None = None):
    self.source, self.transform = source, transform
    self.max_tries = max_tries or len(source)
    self._lock = threading.Lock()
    self._skipped = 0
    self._errors: collections.Counter = collections.Counter()
    self._bad: set[int] = set()

  def __getstate__(self) -> dict:
    # grain pickles sources into its worker processes; a lock cannot be pickled.
    state = dict(self.__dict__)
    del state['_lock']
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    for step in range(self.max_tries):
      j = (index + step) % len(self.source)
      try:
        item = self.source[j]
        return self.transform(item) if self.transform else item
      except Exception as e:  # whatever breaks while reading a record is that record's fault
        with self._lock:
          self._skipped += 1
          self._errors[type(e).__name__] += 1
          self._bad.add(j)
    raise RuntimeError(f'{self.max_tries} consecutive records failed from index {index}; '
                       f'errors so far: {dict(self._errors)}')

  @property
  def stats(self) -> dict:
    """skipped: failed reads (a bad record read in two epochs counts twice); bad_records: the
    distinct failing indices; errors: failures by exception type."""
    with self._lock:
      return dict(skipped=self._skipped, bad_records=sorted(self._bad),
                  errors=dict(self._errors))
