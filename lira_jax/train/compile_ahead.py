"""A training stage's programs compiled in background threads: the train step for the stage's
batch shapes and the initialiser of its fresh state. Neither holds arrays, so launch/train.py
compiles the later stages while the first one trains.

Why: XLA compiles on one core, and on the 2-core CPU machine the tiny default's later stages
spent ~20 s (stage 1) and ~30 s (stage 2) compiling and initialising before their first step
(README "The main job", session 21). Compiled beside the first stage's training there, that
time came back as slower first-stage steps (zero-sum on 2 cores), so launch/train.py turns this
on by default only off the CPU backend (--compile-ahead).
"""
from __future__ import annotations

import concurrent.futures

from jax.sharding import Mesh

from lira_jax.train import sharded_step


class StageCompilation:
  """Submits a stage's work to `executor` in this order: its abstract train state, the train
  step's compilation, the initialiser's compilation. A 1-worker executor runs them (and those of
  other stages submitted after) one at a time; a 2-worker one compiles the step and the
  initialiser side by side.

  make_dataset(num_batches) -> the stage's grain dataset (one batch is drawn for its shapes)."""

  def __init__(self, cfg, mesh: Mesh, make_dataset, executor: concurrent.futures.Executor):
    seed = int(cfg.train.seed)
    self._abstract = executor.submit(sharded_step.abstract_train_state, cfg, mesh, seed=seed)

    def compile_step():
      graphdef, abstract, shardings = self._abstract.result()
      step = sharded_step.make_sharded_train_step(cfg, mesh, graphdef, shardings,
                                                  total_steps=int(cfg.train.steps), seed=seed)
      batch = next(iter(make_dataset(1)))
      return step.lower(abstract, sharded_step.abstract_host_batch(batch, mesh)).compile()

    self._step = executor.submit(compile_step)
    self._init = executor.submit(
        lambda: sharded_step.compile_state_init(cfg, self._abstract.result()[2], seed=seed))

  @property
  def graphdef(self):
    return self._abstract.result()[0]

  @property
  def abstract(self) -> sharded_step.TrainState:
    """The TrainState of ShapeDtypeStructs (with shardings) a checkpoint restores into."""
    return self._abstract.result()[1]

  def step(self):
    """The compiled step(state, batch) -> (state, metrics); waits for its compilation."""
    return self._step.result()

  def init(self):
    """The compiled initialiser: init() -> a fresh TrainState; waits for its compilation."""
    return self._init.result()
