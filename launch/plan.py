"""Will this config fit? Plan a train step ahead of time, on simulated devices, allocating nothing.

  python -m launch.plan --config configs/lira_8b.py:stage2 --mesh fsdp=8 --batch 8 \
      [--seq 4096] [--grad-accum 1] [--remat nothing_saveable] [--device-memory-gb 80] \
      [--step-seconds 10] [--peak-tflops 989] [--json]

Lowers and compiles the real-size train step (lira_jax.train.plan) for the mesh (data, fsdp,
tensor) with abstract inputs and prints per-device memory by kind (params, optimizer, gradients,
activations, temporary, batch), the total and whether it fits --device-memory-gb, the FLOPs per
step (scanned layers counted in full) and the MFU a step of --step-seconds would mean at
--peak-tflops per device (989: H100 SXM dense bf16). --json prints one JSON object instead.
--batch is the global batch per step (micro-batches x --grad-accum); --seq sets cfg.seq.max_len.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

MESH_AXES = ('data', 'fsdp', 'tensor')


def parse_mesh(text: str) -> dict[str, int]:
  """'fsdp=8' / 'data=2,fsdp=4' -> {'data': 2, 'fsdp': 4, 'tensor': 1}."""
  shape = dict.fromkeys(MESH_AXES, 1)
  for part in filter(None, text.split(',')):
    name, _, size = part.partition('=')
    if name not in shape or not size.isdigit():
      raise ValueError(f'bad --mesh part {part!r}: use axis=size with axes {MESH_AXES}')
    shape[name] = int(size)
  return shape


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', required=True)
  p.add_argument('--mesh', default='data=1')
  p.add_argument('--batch', type=int, required=True, help='global examples per step')
  p.add_argument('--seq', type=int, help='cfg.seq.max_len')
  p.add_argument('--grad-accum', type=int, default=1)
  p.add_argument('--remat', help='cfg.model.remat_policy (a jax.checkpoint_policies name)')
  p.add_argument('--device-memory-gb', type=float, default=80.0)
  p.add_argument('--step-seconds', type=float, default=10.0)
  p.add_argument('--peak-tflops', type=float, default=989.0)
  p.add_argument('--json', action='store_true')
  args = p.parse_args(argv)
  mesh_shape = parse_mesh(args.mesh)
  devices = math.prod(mesh_shape.values())
  # Simulated host devices stand in for the accelerators: set before JAX starts.
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={devices}')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')

  import lira_jax  # noqa: F401
  from configs.common import load_config
  from lira_jax import sharding
  from lira_jax.train import plan

  cfg = load_config(args.config)
  if args.seq:
    cfg.seq.max_len = args.seq
  if args.remat is not None:
    cfg.model.remat_policy = args.remat or None
  cfg.optim.grad_accum = args.grad_accum
  batch_shards = mesh_shape['data'] * mesh_shape['fsdp']
  if args.batch % (args.grad_accum * batch_shards):
    p.error(f'--batch {args.batch} must split into {args.grad_accum} micro-batches over '
            f'{batch_shards} batch shards')
  mesh = sharding.make_mesh(mesh_shape)
  got = plan.plan_train_step(cfg, mesh, global_batch=args.batch)
  limit = args.device_memory_gb * 2**30
  report = dict(config=args.config, mesh=mesh_shape, batch=args.batch, seq=cfg.seq.max_len,
                grad_accum=args.grad_accum, remat=cfg.model.remat_policy,
                per_device_bytes=got['per_device_bytes'], total=got['total_bytes'],
                xla=got['xla'], flops_per_step=got['flops_per_step'],
                mfu_at_step_seconds=plan.mfu(got['flops_per_step'], args.step_seconds, devices,
                                             args.peak_tflops * 1e12),
                step_seconds=args.step_seconds, device_memory_bytes=limit,
                fits=got['total_bytes'] <= limit)
  if args.json:
    print(json.dumps(report))
    return 0
  gib = lambda b: f'{b / 2**30:8.2f} GiB'
  print(f'{args.config} on mesh {mesh_shape} ({devices} devices), batch {args.batch}, '
        f'seq {cfg.seq.max_len}, grad_accum {args.grad_accum}, remat {cfg.model.remat_policy}')
  for kind, b in got['per_device_bytes'].items():
    print(f'  {kind:<12}{gib(b)}  per device')
  print(f'  {"total":<12}{gib(got["total_bytes"])}  per device (XLA: arguments '
        f'{gib(got["xla"]["argument"]).strip()}, temp {gib(got["xla"]["temp"]).strip()})')
  print(f'  fits {args.device_memory_gb:g} GB: {"yes" if report["fits"] else "NO"}')
  print(f'  FLOPs per step {got["flops_per_step"]:.3e}; at {args.step_seconds:g} s/step the MFU '
        f'would be {report["mfu_at_step_seconds"]:.1%} of {args.peak_tflops:g} TFLOP/s x '
        f'{devices}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
