"""Multi-process start-up: one JAX process per host (TPU pod, multi-node GPU) joins the
distributed runtime before anything touches a device.

Three ways in, checked in order:
  explicit  --coordinator HOST:PORT --num-processes N --process-id I (any cluster, or by hand)
  SLURM     srun-launched tasks (SLURM_NTASKS > 1): JAX reads the coordinator, process count and
            id from the SLURM environment (its SlurmCluster detection)
  TPU pod   a multi-host TPU slice (TPU_WORKER_HOSTNAMES lists more than one host): JAX reads
            them from the TPU metadata
Otherwise the job is single-process and nothing is initialised. After this, jax.devices() is the
global device list (the mesh of cfg.mesh spans every host) and each process feeds its own share
of each batch (lira_jax.data.pipeline strides the example stream by process index).
"""
from __future__ import annotations

import os

import jax


def multi_process_environment() -> str | None:
  """'slurm' / 'tpu' when the environment describes a multi-process job, else None."""
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_PROCID' in os.environ:
    return 'slurm'
  if len([h for h in os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    return 'tpu'
  return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str:
  """Joins the distributed runtime as described above; returns how ('explicit', 'slurm',
  'tpu' or 'single')."""
  if coordinator:
    if num_processes is None or process_id is None:
      raise ValueError('--coordinator needs --num-processes and --process-id')
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return 'explicit'
  how = multi_process_environment()
  if how:
    jax.distributed.initialize()  # the cluster environment supplies every argument
    return how
  return 'single'
