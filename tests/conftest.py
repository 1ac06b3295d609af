"""Test setup: 8 host CPU devices, so sharded code runs on a CPU-only machine.

XLA_FLAGS must be set before JAX initialises its backends, hence here, before any test imports jax.
The tests run against the installed package (`pip install -e '.[test]'`). Helpers beside the tests
(`torch_reference`, `data_fixtures`) import by name: this folder has no `__init__.py`, so pytest's
default import mode puts it on `sys.path` as the conftest's directory.
"""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
