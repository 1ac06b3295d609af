"""The CPU backend: C++ kernels, convolution forms and HINet's layers on them, for speed on CPU.

It plugs into the model through `hinet_jax.backends`; nothing else imports it.
"""

from hinet_jax.cpu.convolution import inference_compiler_options
from hinet_jax.cpu.layers import LAYERS, PACKED, prepare_inference

__all__ = ['inference_compiler_options', 'LAYERS', 'PACKED', 'prepare_inference']
