"""Hand-written CPU convolution kernels, compiled on first use and called from XLA through its FFI.

`csrc/conv_kernels.cc` has two: a convolution (`conv_forward`) and its kernel (weight) gradient
(`conv_weight_grad`), for square kernels, any stride and symmetric zero padding, NHWC x HWIO,
float32. On 2 Zen 4 cores XLA:CPU's convolutions (YNNPACK or Eigen) ran HINet's shapes at 60-190
GFLOP/s and its kernel gradients at 60-110; these run at 165-200 (the float32 matmul rate) on every
HINet shape from 128x128x32 to 32x32x256 (bench/README.md, levers log). CPU-only: GPUs and TPUs
keep XLA's convolutions.

The source is compiled with the system C++ compiler (`$CXX`, else `c++`/`g++`/`clang++`) for the
host CPU (`-march=native`) the first time a gradient needs it, into a cache directory
(`$HINET_JAX_CACHE_DIR`, default `~/.cache/hinet_jax`) under a name that hashes the source, flags,
compiler, jaxlib version and CPU features, so a home directory shared by different machines gets one
build per kind of CPU. Without a compiler (or with `HINET_JAX_NATIVE_KERNELS=0`) `available()` is
False, a warning says why, and callers use XLA's own kernels: slower, same results.
"""

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_SOURCE = pathlib.Path(__file__).parent / 'csrc' / 'conv_kernels.cc'
# FFI target name -> symbol in the library.
_TARGETS = {'hinet_conv_fwd': 'HinetConvFwd', 'hinet_conv_wgrad': 'HinetConvWgrad'}
_FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-w')
_ENV_SWITCH = 'HINET_JAX_NATIVE_KERNELS'

_lock = threading.Lock()


def _compiler() -> str | None:
  for name in (os.environ.get('CXX'), 'c++', 'g++', 'clang++'):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cpu_features() -> str:
  """The CPU model and feature flags: what `-march=native` compiles for."""
  try:
    lines = pathlib.Path('/proc/cpuinfo').read_text().splitlines()
  except OSError:
    return platform.machine() + platform.processor()
  fields = ('model name', 'flags', 'Features')
  keep = [line for line in lines if line.split(':')[0].strip() in fields]
  return '\n'.join(sorted(set(keep)))


def cache_dir() -> pathlib.Path:
  default = pathlib.Path(os.environ.get('XDG_CACHE_HOME', pathlib.Path.home() / '.cache'))
  return pathlib.Path(os.environ.get('HINET_JAX_CACHE_DIR', default / 'hinet_jax'))


def _build(compiler: str) -> pathlib.Path:
  """Compiles the source into the cache (once per source/compiler/CPU) and returns the library."""
  version = subprocess.run([compiler, '--version'], capture_output=True, text=True,
                           check=False).stdout
  key = hashlib.sha256('\0'.join([
      _SOURCE.read_text(), ' '.join(_FLAGS), version, importlib.metadata.version('jaxlib'),
      _cpu_features()
  ]).encode()).hexdigest()[:16]
  out = cache_dir() / f'conv_kernels-{key}.so'
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  # Build next to the target and rename: concurrent builders never load a half-written library.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=out.parent)
  os.close(fd)
  try:
    cmd = [compiler, *_FLAGS, f'-I{jax.ffi.include_dir()}', str(_SOURCE), '-o', tmp]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{result.stderr[-2000:]}')
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return out


@functools.cache
def _load() -> bool:
  if os.environ.get(_ENV_SWITCH, '1') == '0':
    return False
  compiler = _compiler()
  if compiler is None:
    logging.warning('hinet_jax: no C++ compiler found (set $CXX); CPU convolutions use XLA\'s '
                    'slower kernels.')
    return False
  try:
    library = ctypes.cdll.LoadLibrary(str(_build(compiler)))
  except (OSError, RuntimeError) as e:
    logging.warning('hinet_jax: building %s failed, CPU convolutions use XLA\'s slower kernels '
                    '(set %s=0 to skip the build): %s', _SOURCE, _ENV_SWITCH, e)
    return False
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu')
  return True


def available() -> bool:
  """Whether the CPU kernels are built and registered (builds them on the first call)."""
  with _lock:
    return _load()


def _check(*arrays: Array) -> None:
  if not available():
    raise RuntimeError(f'hinet_jax CPU kernels are not available ({_SOURCE} did not build; '
                       'see the warning above). Use conv_impl="xla".')
  if any(a.dtype != jnp.float32 for a in arrays):
    raise TypeError(f'hinet_jax CPU kernels take float32, got {[str(a.dtype) for a in arrays]}.')


def _out_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
  return max(0, (size + 2 * padding - kernel_size) // stride + 1)


def conv_forward(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  """`lax.conv` of NHWC `x` with a square HWIO `kernel`, symmetric zero padding, on CPU.

  Args:
    x: (N, H, W, C) float32.
    kernel: (k, k, C, O) float32.
    stride, padding: the same in both spatial dimensions.

  Returns:
    (N, Ho, Wo, O) float32, equal to XLA's convolution up to float rounding.
  """
  _check(x, kernel)
  n, h, w, _ = x.shape
  k = kernel.shape[0]
  out = jax.ShapeDtypeStruct((n, _out_size(h, k, stride, padding), _out_size(w, k, stride, padding),
                              kernel.shape[-1]), jnp.float32)
  # 'sequential': under vmap each element is its own call.
  return jax.ffi.ffi_call('hinet_conv_fwd', out, vmap_method='sequential')(
      x, kernel, stride=np.int64(stride), padding=np.int64(padding))


def conv_weight_grad(x: Array, g: Array, kernel_size: int, stride: int, padding: int) -> Array:
  """Kernel gradient of `conv_forward(x, W, stride, padding)` for the output cotangent `g`.

  Args:
    x: (N, H, W, C) float32 input of the convolution.
    g: (N, Ho, Wo, O) float32 cotangent of its output.
    kernel_size, stride, padding: the convolution's (square) geometry.

  Returns:
    (kernel_size, kernel_size, C, O) float32, equal to XLA's kernel gradient up to float rounding.
  """
  _check(x, g)
  out = jax.ShapeDtypeStruct((kernel_size, kernel_size, x.shape[-1], g.shape[-1]), jnp.float32)
  # 'sequential': under vmap (per-example gradients) each example is its own call.
  return jax.ffi.ffi_call('hinet_conv_wgrad', out, vmap_method='sequential')(
      x, g, kernel_size=np.int64(kernel_size), stride=np.int64(stride), padding=np.int64(padding))
