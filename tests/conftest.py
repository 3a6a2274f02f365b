"""Markers: `slow` (heavier, still part of the full suite) and `gpu` (skipped without a GPU)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

SHARED = os.path.join(os.path.dirname(ROOT), 'shared')


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: heavier test (runs in CI; deselect with -m "not slow")')
  config.addinivalue_line('markers', 'gpu: needs a GPU; skipped with the reason printed otherwise')


def _has_gpu() -> bool:
  import jax
  try:
    return bool(jax.devices('gpu'))
  except RuntimeError:
    return False


def pytest_collection_modifyitems(config, items):
  gpu_items = [i for i in items if 'gpu' in i.keywords]
  if gpu_items and not _has_gpu():
    skip = pytest.mark.skip(reason='no GPU visible to JAX (gpu marker)')
    for item in gpu_items:
      item.add_marker(skip)


@pytest.fixture(scope='session')
def shared_dir():
  if not os.path.isdir(SHARED):
    pytest.fail(f'shared/ with golden vectors not found at {SHARED}')
  return SHARED
