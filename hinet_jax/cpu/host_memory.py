"""Host memory: keep what XLA:CPU frees for its next execution instead of returning it to the OS.

With glibc's defaults XLA:CPU's per-execution buffers are fresh `mmap`s, page-faulted in every
step (bench/README.md); `keep_freed_memory()` serves them from one kept heap, at the price of
holding the peak heap. It must run before JAX executes anything (threads keep their first arena).
Opt out with HINET_JAX_KEEP_FREED_MEMORY=0; other allocators are left alone.
"""

import ctypes
import importlib.util
import logging
import os
import pkgutil
import platform

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_ENV_SWITCH = 'HINET_JAX_KEEP_FREED_MEMORY'

_applied = False


def keep_freed_memory(only_on_cpu: bool = True) -> bool:
  """Makes glibc malloc keep freed memory for reuse: one arena, no mmap, no trimming. Idempotent.

  No mmap rather than a high threshold: mallopt's is an int, smaller than XLA's temporaries.

  Args:
    only_on_cpu: skip it where JAX will run on a GPU/TPU (`will_run_on_cpu`).

  Returns:
    Whether the settings are in effect; a log line says why not.
  """
  global _applied
  if _applied:
    return True
  if only_on_cpu and not will_run_on_cpu():
    logging.info('host_memory: JAX will run on an accelerator, malloc settings left alone.')
    return False
  if os.environ.get(_ENV_SWITCH, '1') == '0':
    logging.info('host_memory: %s=0, malloc settings left alone.', _ENV_SWITCH)
    return False
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    logging.info('host_memory: not glibc (%s), malloc settings left alone.', platform.libc_ver())
    return False
  try:
    libc = ctypes.CDLL(None)
    mallopt = libc.mallopt
  except (OSError, AttributeError) as e:
    logging.info('host_memory: no mallopt (%s), malloc settings left alone.', e)
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  # M_MMAP_MAX 0: never mmap; M_TRIM_THRESHOLD -1: never trim the heap (mallopt(3)).
  results = [mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, -1)]
  if not all(results):
    logging.warning('host_memory: mallopt refused some settings (%s); XLA:CPU may page-fault '
                    'its buffers on every step.', results)
    return False
  _applied = True
  logging.info('host_memory: glibc malloc keeps freed memory (one arena, no mmap, no trim).')
  return True


def will_run_on_cpu() -> bool:
  """Whether JAX will run on the CPU, answered without initialising JAX's backends."""
  if os.environ.get('JAX_PLATFORMS', '').startswith('cpu'):
    return True
  if importlib.util.find_spec('libtpu'):
    return False
  # GPU backends are PJRT plugins in the `jax_plugins` namespace package (xla_cuda12, ...).
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top
  except ImportError:
    return True
  return not any(pkgutil.iter_modules(jax_plugins.__path__))
