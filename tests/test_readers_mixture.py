"""Mixture proportions, repeats and determinism; SkippingSource counting; both as grain sources."""
from __future__ import annotations

import collections
import pickle

import grain
import pytest

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax.data.readers.mixture import Mixture, SkippingSource, apportion

A = [f'a{i}' for i in range(3)]
B = [f'b{i}' for i in range(5)]


def test_apportion_is_exact():
  assert apportion(10, [1, 1, 1]) == [4, 3, 3]  # remainder ties go to the earlier source
  assert apportion(100, [9, 3, 3, 1]) == [56, 19, 19, 6]
  assert sum(apportion(7, [0.2, 0.5, 0.3])) == 7
  with pytest.raises(ValueError):
    apportion(5, [0, 0])


def test_repeats_list_every_record_r_times():
  mix = Mixture({'a': A, 'b': B}, repeats={'a': 2}, seed=0)
  assert len(mix) == 11 and mix.counts == {'a': 6, 'b': 5}
  items = [mix[i] for i in range(len(mix))]
  assert collections.Counter(items) == {**{a: 2 for a in A}, **{b: 1 for b in B}}
  for i in range(len(mix)):
    name, j = mix.locate(i)
    assert items[i] == {'a': A, 'b': B}[name][j]


def test_weights_set_proportions_and_cycle_each_source():
  mix = Mixture({'a': A, 'b': B}, weights={'a': 3, 'b': 1}, length=40, seed=1)
  assert mix.counts == {'a': 30, 'b': 10}
  counts = collections.Counter(mix[i] for i in range(len(mix)))
  # Each source is cycled through before a record repeats: exactly even coverage.
  assert counts == {**{a: 10 for a in A}, **{b: 2 for b in B}}
  assert Mixture({'a': A, 'b': B}, weights={'a': 1}, length=8).counts == {'a': 8, 'b': 0}


def _order(seed: int) -> list[str]:
  mix = Mixture({'a': A, 'b': B}, repeats={'a': 2}, seed=seed)
  return [mix[i] for i in range(len(mix))]


def test_mixture_is_deterministic_from_its_seed():
  assert _order(5) == _order(5)
  assert _order(5) != _order(6)
  plain = Mixture({'a': A, 'b': B}, shuffle=False)
  assert [plain[i] for i in range(len(plain))] == A + B
  with pytest.raises(KeyError):
    Mixture({'a': A}, repeats={'c': 2})


class Flaky:
  """A source whose records at `bad` raise, like a corrupt file would."""

  def __init__(self, items, bad):
    self.items, self.bad = items, set(bad)

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    if i in self.bad:
      raise OSError(f'record {i} is corrupt')
    return self.items[i]


def test_skipping_source_returns_the_next_good_record_and_counts():
  src = SkippingSource(Flaky(B, bad={1, 4}))
  assert [src[i] for i in range(5)] == ['b0', 'b2', 'b2', 'b3', 'b0']
  assert src.stats == dict(skipped=2, bad_records=[1, 4], errors={'OSError': 2})
  copy = pickle.loads(pickle.dumps(src))  # grain ships sources to worker processes
  assert copy[1] == 'b2' and copy.stats['skipped'] == 3
  with pytest.raises(RuntimeError, match='consecutive records failed'):
    SkippingSource(Flaky(A, bad={0, 1, 2}))[0]


def test_mixture_of_skipping_sources_under_grain():
  mix = Mixture({'a': SkippingSource(Flaky(A, bad={1})), 'b': B}, weights={'a': 1, 'b': 1},
                length=12, seed=2)
  got = list(grain.MapDataset.source(mix))
  assert got == [mix[i] for i in range(len(mix))] and len(got) == 12
  assert 'a1' not in got and collections.Counter(x[0] for x in got) == {'a': 6, 'b': 6}
  batches = list(grain.MapDataset.source(mix).batch(4, batch_fn=list))
  assert [len(b) for b in batches] == [4, 4, 4]
