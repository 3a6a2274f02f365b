"""lira_jax: LIRA (ICCV 2025) with GSVA-style multi-target [SEG] / [REJ] in JAX + Flax NNX."""
import flax as _flax

# Parameters carry logical axis names; placement is decided by lira_jax.sharding at jit time,
# not eagerly when a variable is created. Set as the process-wide default (not nnx's
# thread-local override): the train step of a later stage is traced in a background thread.
_flax.config.update('flax_always_shard_variable', False)
