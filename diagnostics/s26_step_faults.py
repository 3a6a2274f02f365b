"""Session 26: a stage's train step timed in isolation, with the CPU it costs and the page
faults it takes (getrusage), to see what the host's allocator does to a step. Usage (repo root;
the launcher's huge-page restart does not apply here, so compare by setting the tunable):
  python diagnostics/s26_step_faults.py STAGE
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python diagnostics/s26_step_faults.py STAGE
Prints s/step, user and system CPU seconds per step and minor faults per step over 30 steps
after 10 warm-up steps (stage 0 on the 2-core machine: 0.183 s, 0.25 / 0.08 s, 55 k faults
without the tunable; 0.163 s, 0.25 / 0.04 s, 486 faults with it)."""
import concurrent.futures
import resource
import sys
import time

import jax

from launch.train import _StageSetup
from lira_jax.train.compile_ahead import StageCompilation
from lira_jax.train.loop import put_batch


def usage():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime, r.ru_stime, r.ru_minflt


stage = int(sys.argv[1])
setup = _StageSetup('configs/tiny_synthetic.py', stage, [])
programs = StageCompilation(setup.cfg, setup.mesh, setup.make_dataset,
                            concurrent.futures.ThreadPoolExecutor(2))
state, step = programs.init()(), programs.step()
batches = iter(setup.make_dataset(40))
batches = [put_batch(next(batches), setup.mesh) for _ in range(40)]
for batch in batches[:10]:
  state, _ = step(state, batch)
jax.block_until_ready(state)
before, began = usage(), time.time()
for batch in batches[10:]:
  state, _ = step(state, batch)
jax.block_until_ready(state)
seconds = time.time() - began
(user, system, faults) = (b - a for a, b in zip(before, usage()))
print(f'stage {stage}: {seconds / 30:.3f} s/step, user {user / 30:.3f} s, system '
      f'{system / 30:.3f} s, {faults / 30:.0f} minor faults per step')
