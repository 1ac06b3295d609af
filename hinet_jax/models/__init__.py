"""HINet as the paper draws it, its presets, and params-only checkpoints."""

from hinet_jax.models.hinet import *  # noqa: F401,F403
from hinet_jax.models.hinet import PACKED, pack_kernels, torch_kernel_init, torch_bias_init  # noqa: F401
