"""Test setup: 8 host CPU devices, so sharded code runs on a CPU-only machine.

XLA_FLAGS must be set before JAX initialises its backends, hence here, before any test imports jax.
"""

import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# Tests import helpers that live beside them (e.g. torch_reference) and the top-level scripts.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
