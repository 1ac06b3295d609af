"""Hand-written CPU convolution kernels (`csrc/conv_kernels.cc`), called from XLA through its FFI.

Direct products (`conv_forward`, `conv_input_grad`, both gradients in one call), kernel packing,
and Winograd F(2x2 | 4x4, 3x3): NHWC, float32, square kernels up to 8x8. XLA:CPU runs HINet's
shapes well below the matmul rate, these near it (bench/README.md). Built on first use for the
host CPU into `$HINET_JAX_CACHE_DIR` (the name hashes source, flags, compiler, jaxlib and CPU),
self-tested once per build (`selftest`); without a compiler, on a failed test or with
`HINET_JAX_NATIVE_KERNELS=0`, `available()` is False and callers use XLA's kernels.
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
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

from hinet_jax import files

Array = jax.Array

_SOURCE = pathlib.Path(__file__).parent / 'csrc' / 'conv_kernels.cc'
_TARGETS = {'hinet_conv': 'HinetConv', 'hinet_conv_bwd': 'HinetConvBwd', 'hinet_pack': 'HinetPack',
            'hinet_winograd': 'HinetWinograd', 'hinet_pack_winograd': 'HinetPackWinograd',
            'hinet_winograd_bwd': 'HinetWinogradBwd'}
MAX_KERNEL_SIZE = 8  # kMaxTaps = 64 in the source
_FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-w')
_ENV_SWITCH = 'HINET_JAX_NATIVE_KERNELS'
_ENV_FLAGS = 'HINET_JAX_CPU_KERNEL_FLAGS'


def _flags() -> list[str]:
  return [*_FLAGS, *os.environ.get(_ENV_FLAGS, '').split()]

_lock = threading.Lock()


def _compiler() -> str | None:
  for name in (os.environ.get('CXX'), 'c++', 'g++', 'clang++'):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cpu_features() -> str:
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
  """Compiles the source into the cache once per build key; returns the library."""
  version = subprocess.run([compiler, '--version'], capture_output=True, text=True,
                           check=False).stdout
  key = hashlib.sha256('\0'.join([
      _SOURCE.read_text(), ' '.join(_flags()), version, importlib.metadata.version('jaxlib'),
      _cpu_features()
  ]).encode()).hexdigest()[:16]
  out = cache_dir() / f'conv_kernels-{key}.so'
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  # Rename into place: concurrent builders never load a half-written library.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=out.parent)
  os.close(fd)
  try:
    cmd = [compiler, *_flags(), f'-I{jax.ffi.include_dir()}', str(_SOURCE), '-o', tmp]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{result.stderr[-2000:]}')
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return out


# Set while the self-test runs under `_lock`: the kernels' own calls must not wait for it.
_self_testing = False


def _verdict(library: pathlib.Path) -> tuple[bool, str]:
  """(passed, detail) of the self-test, run once per build; the verdict is kept beside it."""
  global _self_testing
  from hinet_jax.cpu import selftest  # pylint: disable=g-import-not-at-top  (only after a build)

  test_key = hashlib.sha256(pathlib.Path(selftest.__file__).read_bytes()).hexdigest()[:8]
  record = library.with_suffix(f'.selftest-{test_key}')
  if record.exists():
    passed, _, detail = record.read_text().partition('\n')
    return passed == 'passed', detail

  _self_testing = True
  try:
    result = selftest.run(sys.modules[__name__])
  finally:
    _self_testing = False
  error, case = result.worst
  detail = f'largest relative error {error:.2g} (allowed {selftest.TOLERANCE:g}) in {case}'
  files.write_text(record, ('passed' if result.passed else 'failed') + '\n' + detail)
  return result.passed, detail


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
    path = _build(compiler)
    library = ctypes.cdll.LoadLibrary(str(path))
  except (OSError, RuntimeError) as e:
    logging.warning('hinet_jax: building %s failed, CPU convolutions use XLA\'s slower kernels '
                    '(set %s=0 to skip the build): %s', _SOURCE, _ENV_SWITCH, e)
    return False
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu')
  passed, detail = _verdict(path)
  if not passed:
    logging.warning('hinet_jax: the CPU kernels built for this CPU (%s) disagree with XLA\'s '
                    'convolutions (%s); CPU convolutions use XLA\'s slower kernels.', path, detail)
  return passed


def available() -> bool:
  """Whether the kernels are built and passed their self-test (the first call does both)."""
  with _lock:
    return _load()


def _check(*arrays: Array) -> None:
  if not _self_testing and not available():
    raise RuntimeError(f'hinet_jax CPU kernels are not available ({_SOURCE} did not build or '
                       'failed its self-test; see the warning above). Use backend="xla".')
  if any(a.dtype != jnp.float32 for a in arrays):
    raise TypeError(f'hinet_jax CPU kernels take float32, got {[str(a.dtype) for a in arrays]}.')


def _out_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
  return max(0, (size + 2 * padding - kernel_size) // stride + 1)


# 'HWIO' = (k, k, C, O); 'HWOI' = (k, k, O, C), a transposed convolution's kernel.
KERNEL_LAYOUTS = ('HWIO', 'HWOI')


def _layout_attrs(layout: str) -> dict:
  if layout not in KERNEL_LAYOUTS:
    raise ValueError(f'kernel layout must be one of {KERNEL_LAYOUTS}, got {layout!r}.')
  return dict(kernel_hwoi=np.int64(layout == 'HWOI'))


def _kernel_attrs(stride: int, padding: int, layout: str) -> dict:
  return dict(stride=np.int64(stride), padding=np.int64(padding), **_layout_attrs(layout))


def _io(kernel: Array, layout: str) -> tuple[int, int]:
  c, o = kernel.shape[2:]
  return (o, c) if layout == 'HWOI' else (c, o)


def conv_forward(x: Array, kernel: Array, stride: int, padding: int,
                 kernel_layout: str = 'HWIO', bias: Array | None = None,
                 relu_slope: float | None = None, residual: Array | None = None,
                 packed: Array | None = None, x2: Array | None = None) -> Array:
  """`lax.conv` of NHWC `x` with a square `kernel`, symmetric zero padding, on CPU.

  Args:
    x: (N, H, W, C) float32; with `x2`, its first C1 channels.
    kernel: (k, k, C, O), or (k, k, O, C) with `kernel_layout='HWOI'`; k <= 8.
    stride, padding: the same in both spatial dimensions.
    kernel_layout: one of `KERNEL_LAYOUTS`.
    bias, relu_slope, residual: optional epilogue inside the kernel: + bias, LeakyReLU, + residual.
    packed: optional `pack_kernel(kernel, kernel_layout)` (inference; not differentiable).
    x2: optional (N, H, W, C - C1), joined after `x` along the channels, read in place.

  Returns:
    (N, Ho, Wo, O) float32, XLA's result up to float rounding.
  """
  _check(x, kernel, *(a for a in (bias, residual, packed, x2) if a is not None))
  n, h, w, _ = x.shape
  k = kernel.shape[0]
  c, o = _io(kernel, kernel_layout)
  joined = x.shape[-1] + (0 if x2 is None else x2.shape[-1])
  if joined != c or (x2 is not None and x2.shape[:3] != x.shape[:3]):
    shapes = f'{x.shape}' + ('' if x2 is None else f' joined with {x2.shape}')
    raise ValueError(f"conv_forward: the input {shapes} must have the kernel's {c} channels "
                     '(and the joined arrays one N, H, W).')
  out = jax.ShapeDtypeStruct((n, _out_size(h, k, stride, padding), _out_size(w, k, stride, padding),
                              o), jnp.float32)
  if residual is not None and residual.shape != out.shape:
    raise ValueError(f'conv_forward: the residual must be shaped as the output {out.shape}, got '
                     f'{residual.shape}.')
  # The packing scratch is a second output so that XLA allocates (and reuses) it.
  y, _ = jax.ffi.ffi_call('hinet_conv', (out, _packing_scratch(k, c, o, packed)),
                          vmap_method='sequential')(
                              x, _empty_or(x2), kernel, _empty_or(bias), _empty_or(residual),
                              _empty_or(packed), transposed=np.int64(0),
                              **_epilogue_attrs(relu_slope),
                              **_kernel_attrs(stride, padding, kernel_layout))
  return y


def _empty_or(a: Array | None) -> Array:
  return jnp.zeros((0,), jnp.float32) if a is None else a


def _epilogue_attrs(relu_slope: float | None) -> dict:
  return dict(relu=np.int64(relu_slope is not None),
              relu_slope=np.float32(0.0 if relu_slope is None else relu_slope))


def conv_input_grad(g: Array, kernel: Array, x_shape: tuple, stride: int, padding: int,
                    kernel_layout: str = 'HWIO', bias: Array | None = None,
                    packed: Array | None = None) -> Array:
  """Input gradient of `conv_forward(x, kernel, stride, padding)` for the cotangent `g`; also
  the transposed convolution of `g` (`bias` (C,), `packed` with `transposed=True`).

  Returns:
    (N, H, W, C) = `x_shape` float32, XLA's input gradient up to float rounding.
  """
  _check(g, kernel, *(a for a in (bias, packed) if a is not None))
  k = kernel.shape[0]
  c, o = _io(kernel, kernel_layout)
  out = jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32)
  dx, _ = jax.ffi.ffi_call('hinet_conv', (out, _packing_scratch(k, o, c, packed)),
                           vmap_method='sequential')(
                               g, _empty_or(None), kernel, _empty_or(bias), _empty_or(None),
                               _empty_or(packed), transposed=np.int64(1),
                               **_epilogue_attrs(None),
                               **_kernel_attrs(stride, padding, kernel_layout))
  return dx


def _packed_kernel(k: int, reduction: int, outputs: int) -> jax.ShapeDtypeStruct:
  """A packed kernel's shape: outputs rounded up to 16 floats (`Packed::Size` in the source)."""
  return jax.ShapeDtypeStruct((k * k * reduction * -(-outputs // 16) * 16,), jnp.float32)


def _packing_scratch(k: int, reduction: int, outputs: int,
                     packed: Array | None) -> jax.ShapeDtypeStruct:
  if packed is None:
    return _packed_kernel(k, reduction, outputs)
  if packed.ndim != 1 or packed.shape[0] < _packed_kernel(k, reduction, outputs).shape[0]:
    raise ValueError(f'packed kernel of shape {packed.shape} does not fit this convolution: pass '
                     '`pack_kernel` of the same kernel, layout and direction (transposed).')
  return jax.ShapeDtypeStruct((0,), jnp.float32)


def pack_kernel(kernel: Array, kernel_layout: str = 'HWIO', transposed: bool = False) -> Array:
  """`kernel` packed for `conv_forward(..., packed=)`, or with `transposed` for
  `conv_input_grad(..., packed=)`: inference packs once per set of weights (bench/README.md).
  """
  _check(kernel)
  k = kernel.shape[0]
  c, o = _io(kernel, kernel_layout)
  reduction, outputs = (o, c) if transposed else (c, o)
  return jax.ffi.ffi_call('hinet_pack', _packed_kernel(k, reduction, outputs),
                          vmap_method='sequential')(kernel, transposed=np.int64(transposed),
                                                    **_layout_attrs(kernel_layout))


WINOGRAD_TILES = (2, 4)  # F(2x2, 3x3) and F(4x4, 3x3): output pixels a tile side
WINOGRAD_CHANNEL_MULTIPLE = 16  # C, O and a join's first part: whole vectors of the widest ISA


def winograd_applies(x_shape: tuple, kernel_shape: tuple, stride: int, padding: int,
                     c1: int | None = None) -> bool:
  """Whether `winograd_conv` runs this conv: 3x3/s1/p1, channels (and `c1`) multiples of 16."""
  c, o = kernel_shape[2:]
  return (tuple(kernel_shape[:2]) == (3, 3) and stride == 1 and padding == 1
          and x_shape[-1] == c and all(v % WINOGRAD_CHANNEL_MULTIPLE == 0
                                       for v in (c, o, c if c1 is None else c1)))


def pack_winograd(kernel: Array, tile: int = 2) -> Array:
  """The (3, 3, C, O) `kernel` transformed (G g G^T) and packed for `winograd_conv`; in C++, as
  XLA's transform was slower (bench/README.md)."""
  _check(kernel)
  if tile not in WINOGRAD_TILES:
    raise ValueError(f'pack_winograd: tile must be one of {WINOGRAD_TILES}, got {tile!r}.')
  if kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
    raise ValueError(f'pack_winograd: the kernel must be (3, 3, C, O), got {kernel.shape}.')
  c, o = kernel.shape[2:]
  return jax.ffi.ffi_call('hinet_pack_winograd', _packed_kernel(tile + 2, c, o),
                          vmap_method='sequential')(kernel, tile=np.int64(tile))


def winograd_tile_of(packed: Array, c: int, o: int) -> int:
  """The Winograd tile that `pack_winograd` packed `packed` with for C -> O channels, or 0 where
  it is another packing (`pack_kernel`'s): the two differ in size."""
  sizes = {_packed_kernel(t + 2, c, o).shape: t for t in WINOGRAD_TILES}
  return sizes.get(tuple(packed.shape), 0)


def winograd_conv(x: Array, packed: Array, features: int, bias: Array | None = None,
                  relu_slope: float | None = None, residual: Array | None = None,
                  x2: Array | None = None) -> Array:
  """The 3x3/s1/p1 conv of `x` (joined with `x2`) by Winograd, tile as `packed` was made
  (`pack_winograd`), with `conv_forward`'s epilogue; not differentiable. Returns (N, H, W,
  `features`), the direct convolution's result up to float rounding."""
  _check(x, packed, *(a for a in (bias, residual, x2) if a is not None))
  c = x.shape[-1] + (0 if x2 is None else x2.shape[-1])
  if not winograd_applies((*x.shape[:3], c), (3, 3, c, features), 1, 1,
                          None if x2 is None else x.shape[-1]):
    raise ValueError(f'winograd_conv: the channels ({c} in' +
                     ('' if x2 is None else f', joined from {x.shape[-1]} + {x2.shape[-1]}') +
                     f', {features} out) must be multiples of {WINOGRAD_CHANNEL_MULTIPLE}; use '
                     '`conv_forward` for this convolution.')
  tile = winograd_tile_of(packed, c, features)
  if not tile:
    raise ValueError(f'winograd_conv: packed kernel of shape {packed.shape} is not the '
                     f'transformed kernel packed for {c} -> {features} channels: pass '
                     '`pack_winograd(kernel, tile)`.')
  out = jax.ShapeDtypeStruct(x.shape[:3] + (features,), jnp.float32)
  if residual is not None and residual.shape != out.shape:
    raise ValueError(f'winograd_conv: the residual must be shaped as the output {out.shape}, '
                     f'got {residual.shape}.')
  return jax.ffi.ffi_call('hinet_winograd', out, vmap_method='sequential')(
      x, _empty_or(x2), packed, _empty_or(bias), _empty_or(residual),
      tile=np.int64(tile), **_epilogue_attrs(relu_slope))


def winograd_conv_grads(x: Array, g: Array, kernel: Array, tile: int = 4,
                        input_grad: bool = True):
  """`conv_grads` of the 3x3/s1/p1 conv by Winograd F(tile x tile, 3x3), C and O multiples of 16.

  Returns:
    (dx or None without `input_grad`, dkernel), `conv_grads`' up to float rounding.
  """
  _check(x, g, kernel)
  if tile not in WINOGRAD_TILES:
    raise ValueError(f'winograd_conv_grads: tile must be one of {WINOGRAD_TILES}, got {tile!r}.')
  c, o = x.shape[-1], g.shape[-1]
  if not (x.ndim == 4 and g.shape[:3] == x.shape[:3] and kernel.shape == (3, 3, c, o)):
    raise ValueError(f'winograd_conv_grads: x {x.shape}, g {g.shape} and kernel {kernel.shape} '
                     'must be (N, H, W, C), (N, H, W, O) and (3, 3, C, O).')
  if c % WINOGRAD_CHANNEL_MULTIPLE or o % WINOGRAD_CHANNEL_MULTIPLE:
    raise ValueError(f'winograd_conv_grads: the channels ({c} in, {o} out) must be multiples of '
                     f'{WINOGRAD_CHANNEL_MULTIPLE}; use `conv_grads`.')
  empty = jax.ShapeDtypeStruct((0,), jnp.float32)
  outs = (jax.ShapeDtypeStruct(x.shape, jnp.float32) if input_grad else empty,
          jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
          _packed_kernel(tile + 2, o, c) if input_grad else empty)
  dx, dkernel, _ = jax.ffi.ffi_call('hinet_winograd_bwd', outs, vmap_method='sequential')(
      x, g, kernel, tile=np.int64(tile), input_grad=np.int64(input_grad))
  return (dx if input_grad else None), dkernel


def _backward_call(a: Array, b: Array, kernel: Array, d_in: jax.ShapeDtypeStruct | None,
                   stride: int, padding: int, kernel_layout: str, transposed: bool):
  """The C++ `ConvBwdImpl`: `a` is the convolution's input side, `b` its output side."""
  _check(a, b, kernel)
  k = kernel.shape[0]
  c, o = _io(kernel, kernel_layout)
  reduction, outputs = (c, o) if transposed else (o, c)
  empty = jax.ShapeDtypeStruct((0,), jnp.float32)
  outs = (d_in or empty, jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
          _packed_kernel(k, reduction, outputs) if d_in else empty)
  grad, dkernel, _ = jax.ffi.ffi_call('hinet_conv_bwd', outs, vmap_method='sequential')(
      a, b, kernel, transposed=np.int64(transposed), input_grad=np.int64(d_in is not None),
      **_kernel_attrs(stride, padding, kernel_layout))
  return (grad if d_in else None), dkernel


def conv_grads(x: Array, g: Array, kernel: Array, stride: int, padding: int,
               kernel_layout: str = 'HWIO', input_grad: bool = True):
  """Input and kernel gradients of `conv_forward(x, kernel, stride, padding)` in one call.

  Returns:
    (dx or None without `input_grad`, dkernel shaped as `kernel`), XLA's up to float rounding.
  """
  return _backward_call(x, g, kernel, jax.ShapeDtypeStruct(x.shape, jnp.float32)
                        if input_grad else None, stride, padding, kernel_layout, False)


def transposed_conv_grads(x: Array, g: Array, kernel: Array, stride: int, padding: int,
                          kernel_layout: str = 'HWIO', input_grad: bool = True):
  """Input and kernel gradients of the transposed convolution `conv_input_grad(x, kernel, ...)`.

  Returns:
    (dx shaped as `x` or None, dkernel shaped as `kernel`).
  """
  return _backward_call(g, x, kernel, jax.ShapeDtypeStruct(x.shape, jnp.float32)
                        if input_grad else None, stride, padding, kernel_layout, True)
