"""Host memory: keep what XLA:CPU frees for its next execution instead of returning it to the OS.

XLA:CPU allocates the buffers of every execution anew with malloc and frees them after it. With
glibc's defaults each large buffer, and every buffer a thread outside the main malloc arena asks
for (XLA runs on its own threads, and their arenas can't hold chunks over 64 MiB), is a fresh
`mmap` that the kernel zero-fills page by page on first touch, then `munmap`ed again: page faults
in every execution, a few percent of each forward and train step (bench/README.md), more in VMs
whose host backs pages lazily. `keep_freed_memory()` tells glibc to serve them all from the main
heap and keep it: no faults after the first step. The price is that the process keeps its peak
heap (freed memory is reused by later allocations but not returned to the OS), which is what a
training or inference process wants anyway.

It must run before JAX executes anything (threads keep the arena they first allocated from), so
the entry points call it first thing. Opt out with HINET_JAX_KEEP_FREED_MEMORY=0.
Other C libraries, or a preloaded allocator (tcmalloc, jemalloc), are left alone.
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
  """Makes glibc malloc keep freed memory for reuse: one arena, no mmap, no trimming.

  No mmap at all rather than a high mmap threshold: mallopt's threshold is an int (2 GiB at most),
  and XLA's temporaries can be larger (6.6 GiB for the 1x train step at batch 8 of 256x256).
  Idempotent.

  Args:
    only_on_cpu: skip it where JAX will run on a GPU/TPU (`will_run_on_cpu`): there the
      activations live in device memory, and host threads had better keep their own arenas.

  Returns:
    True if the settings are in effect, False where they don't apply (not glibc, an
    accelerator, opted out, or mallopt refused), with a log line saying which.
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
  """Whether JAX will run on the CPU: JAX_PLATFORMS says cpu, or no GPU/TPU backend is installed.

  Answered without initialising JAX's backends (which would start the threads that
  `keep_freed_memory` has to precede).
  """
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
