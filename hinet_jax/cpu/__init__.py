"""The CPU backend: everything that exists only for speed on CPUs.

Hand-written C++ kernels (`kernels`, `csrc/`) behind XLA FFI custom calls, the convolution forms
and their policy (`convolution`, `winograd`), HINet's layers on them (`layers`: same parameter
tree as `hinet_jax.models`), and the malloc setting for XLA:CPU (`host_memory`). It plugs into
the model through `hinet_jax.backends`; nothing outside that module imports it.
"""

from hinet_jax.cpu.convolution import inference_compiler_options
from hinet_jax.cpu.layers import LAYERS, PACKED, prepare_inference
