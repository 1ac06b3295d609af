"""The environment of the programs the tests launch (train.py, eval.py, `python -c ...`).

Every test process, the pytest workers included (conftest.py), compiles with the same XLA flags:
the suite's compile settings plus a device count of the test's choosing.
"""

import os

# With most optimisations off (conftest.py), XLA's older CPU fusion emitter compiles a small
# HINet's train step in less than half the CPU time of the new one (bench/README.md, 2026-12-07).
# Tests only: with the optimisations on, as users run, it is no faster.
COMPILE_FLAGS = '--xla_cpu_use_fusion_emitters=false'


def xla_flags(num_devices: int) -> str:
  """XLA_FLAGS for a test process with `num_devices` host CPU devices."""
  return f'{COMPILE_FLAGS} --xla_force_host_platform_device_count={num_devices}'


def program_env(num_devices: int = 1, **extra) -> dict:
  """This process's environment for a launched program: CPU only, `num_devices` devices, logs
  unbuffered and without TensorFlow's C++ chatter, then `extra`."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1',
             XLA_FLAGS=xla_flags(num_devices))
  env.update(extra)
  return env
