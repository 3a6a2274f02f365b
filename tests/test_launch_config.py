"""Launch plumbing without a cluster: config overrides from the command line, which stage a
partial run seeds from, the multi-process environment detection, and the released data mixture
of the real configs."""
import pytest

import lira_jax  # noqa: F401
from configs.common import stage_config
from launch.train import _with_seed_stage, apply_overrides
from lira_jax import distributed
from lira_jax.data import mixture_pipeline


def test_overrides_parse_literals_and_reject_unknown_keys():
  cfg = stage_config('configs/lira_2b.py', 2)
  apply_overrides(cfg, ['data.root=/data/x', 'mesh.fsdp=8', 'train.steps=7', 'data.ilvc=False'])
  assert (cfg.data.root, cfg.mesh.fsdp, cfg.train.steps, cfg.data.ilvc) == ('/data/x', 8, 7,
                                                                             False)
  with pytest.raises(KeyError):
    apply_overrides(cfg, ['data.nope=1'])
  with pytest.raises(ValueError):
    apply_overrides(cfg, ['data.root'])


def test_partial_run_seeds_from_the_previous_stage_checkpoint(tmp_path, capsys):
  work = str(tmp_path)
  assert _with_seed_stage(work, [1, 2]) == [1, 2]  # nothing to seed from
  assert 'from its initialisation' in capsys.readouterr().out
  (tmp_path / 'stage0' / 'checkpoints' / '2000').mkdir(parents=True)
  assert _with_seed_stage(work, [1, 2]) == [0, 1, 2]
  assert _with_seed_stage(work, [2]) == [2]  # stage 1 has no checkpoint
  (tmp_path / 'stage2' / 'checkpoints' / '25').mkdir(parents=True)
  assert _with_seed_stage(work, [2]) == [2]  # resumes itself
  (tmp_path / 'stage1' / 'checkpoints' / 'tmp').mkdir(parents=True)  # no step directory
  assert _with_seed_stage(work, [2]) == [2]
  assert _with_seed_stage(work, [0, 1]) == [0, 1]


@pytest.mark.parametrize('env,want', [
    ({}, None),
    ({'SLURM_NTASKS': '1', 'SLURM_PROCID': '0'}, None),
    ({'SLURM_NTASKS': '4', 'SLURM_PROCID': '2'}, 'slurm'),
    ({'TPU_WORKER_HOSTNAMES': 'a,b,c,d'}, 'tpu'),
    ({'TPU_WORKER_HOSTNAMES': 'a'}, None),
])
def test_multi_process_environment(monkeypatch, env, want):
  for k in ('SLURM_NTASKS', 'SLURM_PROCID', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(k, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert distributed.multi_process_environment() == want
  if want is None:
    assert distributed.initialize() == 'single'


def test_explicit_coordinator_needs_all_flags():
  with pytest.raises(ValueError):
    distributed.initialize('host:1234', num_processes=2)


@pytest.mark.parametrize('stage', [1, 2])
def test_released_mixture_is_well_formed(stage):
  cfg = stage_config('configs/lira_8b.py', stage)
  assert cfg.data.kind == 'mixture'
  for name, spec in cfg.data.sources.items():
    assert spec.reader in mixture_pipeline.READERS, name
    assert all(not str(v).startswith('/') for k, v in spec.args.items()
               if k.endswith(('_path', '_dir'))), name
  if stage == 2:
    assert {cfg.data.sources[n].repeat for n in ('refcoco', 'refcoco_plus', 'refcocog')} == {3}
    assert cfg.data.sources.grandf_gcg.repeat == 10
