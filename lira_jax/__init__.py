"""lira_jax: LIRA (ICCV 2025) with GSVA-style multi-target [SEG] / [REJ] in JAX + Flax NNX."""
from flax import nnx as _nnx

# Parameters carry logical axis names; placement is decided by lira_jax.sharding at jit time,
# not eagerly when a variable is created.
_nnx.use_eager_sharding(False)
