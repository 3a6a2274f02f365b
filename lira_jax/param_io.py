"""Saving and loading converted parameters: an orbax checkpoint of the params (a nested dict of
arrays keyed like the nnx state) next to the resolved ml_collections config as JSON."""
from __future__ import annotations

import json
import pathlib
from typing import Callable, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from lira_jax import sharding

PARAMS_DIR = 'params'
CONFIG_FILE = 'config.json'


def flat_params(model: nnx.Module) -> dict[str, jax.Array]:
  """{dotted path: array} of every nnx.Param of `model`."""
  return {'.'.join(map(str, p)): v.get_value() if hasattr(v, 'get_value') else v.value
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def abstract_params(model_fn: Callable[[], nnx.Module]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{dotted path: (shape, dtype)} of the model `model_fn` builds, without allocating it."""
  abstract = nnx.eval_shape(model_fn)
  return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flat_params(abstract).items()}


def _nest(flat: Mapping[str, object]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('.')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _flatten(tree: Mapping, prefix='') -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def save(directory: str | pathlib.Path, params: Mapping[str, np.ndarray | jax.Array],
         config: ml_collections.ConfigDict) -> None:
  """Writes params (flat {path: array}) with orbax and the config as JSON into `directory`."""
  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  (directory / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / PARAMS_DIR, _nest(params))


def load_config(directory: str | pathlib.Path) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads((pathlib.Path(directory) / CONFIG_FILE).read_text()))


def load_params(directory: str | pathlib.Path,
                target: Mapping[str, tuple[tuple[int, ...], np.dtype]] | None = None,
                mesh=None, shardings: Mapping[str, jax.sharding.Sharding] | None = None
                ) -> dict[str, jax.Array]:
  """Restores params as {path: array}. With `target` the stored tree must match it exactly
  (shapes and dtypes); arrays are placed with `shardings` ({path: Sharding}) when given, else
  replicated on `mesh` (or on the default device)."""
  path = pathlib.Path(directory).absolute() / PARAMS_DIR
  with ocp.StandardCheckpointer() as ckptr:
    meta = _flatten(ckptr.metadata(path).item_metadata.tree)
    if target is not None:
      missing, extra = sorted(set(target) - set(meta)), sorted(set(meta) - set(target))
      wrong = [k for k in set(target) & set(meta)
               if tuple(meta[k].shape) != tuple(target[k][0])]
      if missing or extra or wrong:
        raise ValueError(f'checkpoint {directory} does not match the model: missing {missing[:5]}'
                         f', unexpected {extra[:5]}, mis-shaped {wrong[:5]}')
    if shardings is None:
      mesh = mesh or sharding.make_mesh({'data': 1}, jax.devices()[:1])
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      shardings = {k: replicated for k in meta}
    abstract = {k: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=shardings[k])
                for k, m in meta.items()}
    restored = ckptr.restore(path, _nest(abstract))
  return _flatten(restored)


def assign(model: nnx.Module, params: Mapping[str, jax.Array]) -> None:
  """Sets every Param of `model` from {path: array}; the key sets must be identical."""
  state = nnx.state(model, nnx.Param)
  flat = dict(nnx.to_flat_state(state))
  keys = {'.'.join(map(str, p)): p for p in flat}
  missing, extra = sorted(set(keys) - set(params)), sorted(set(params) - set(keys))
  if missing or extra:
    raise ValueError(f'param sets differ: missing {missing[:5]}, unexpected {extra[:5]}')
  for name, p in keys.items():
    flat[p].set_value(params[name]) if hasattr(flat[p], 'set_value') else setattr(
        flat[p], 'value', params[name])
  nnx.update(model, state)
