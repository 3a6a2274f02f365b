"""Shared by the benchmarks: CPU-load refusal (/proc/stat) and median wall-clock timing."""
import os
import statistics
import sys
import time

MAX_FOREIGN_LOAD = 0.2  # of all cores
LOAD_REFUSED = 3


def cpu_snapshot():
  """(busy seconds of all cores, total seconds of all cores, this process's CPU seconds)."""
  with open('/proc/stat') as f:
    jiffies = [int(x) for x in f.readline().split()[1:]]
  # user nice system idle iowait irq softirq steal; guest time is already inside user / nice
  total = sum(jiffies[:8])
  busy = total - jiffies[3] - jiffies[4]
  t = os.times()
  tick = os.sysconf('SC_CLK_TCK')
  return busy / tick, total / tick, t.user + t.system + t.children_user + t.children_system


def foreign_load(start):
  """Fraction of all cores that other processes kept busy since the snapshot `start`."""
  busy, total, own = (now - then for now, then in zip(cpu_snapshot(), start))
  return max(busy - own, 0.0) / max(total, 1e-9)


def check_load(load, when, ignore):
  if load <= MAX_FOREIGN_LOAD:
    return
  why = (f'other processes used {load:.0%} of all cores {when} (limit {MAX_FOREIGN_LOAD:.0%}); '
         'the timings would be skewed')
  if ignore:
    print(f'WARNING: {why}; reporting anyway (--ignore-load)', flush=True)
    return
  print(f'refusing to report: {why}. Run again on an idle machine, or pass --ignore-load.')
  sys.exit(LOAD_REFUSED)


def median_seconds(fn, runs):
  """(median wall seconds of `runs` calls, last output), after one untimed call that absorbs
  compilation (ours) and first-call allocations (both)."""
  fn()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), out
