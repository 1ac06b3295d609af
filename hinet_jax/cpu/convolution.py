"""How each HINet convolution runs on CPU: the forms, and the per-shape policy that picks one.

XLA:CPU's YNNPACK convolutions are slow on some of HINet's shapes (bench/README.md, Levers log),
so the same linear map has several forms (`CONV_IMPLS`): 'native' (the C++ kernels of `kernels`,
3x3 ones by Winograd where `_native_winograd_tile` says), 'matmul' (im2col or matmul + shifted
adds, hand-written VJP), 'winograd' (jnp F(2x2, 3x3) forward), 1x1 as one matmul, and 'xla'.
'auto' (`auto_impl`) uses 'native' wherever the kernels apply, else picks an XLA form per shape;
on GPU and TPU it is `lax.conv`. All agree with `lax.conv` to float32 rounding
(tests/test_cpu_convolution.py). Inference can pass kernels packed once per set of weights
(`pack_for_conv`, `pack_for_upconv`; not differentiable).
"""

import functools

import jax
import jax.numpy as jnp

from hinet_jax.cpu import kernels as cpu_kernels
from hinet_jax.cpu.winograd import winograd_conv3x3

Array = jax.Array

CONV_IMPLS = ('xla', 'winograd', 'matmul', 'native', 'auto')

# Thresholds from per-conv timings (bench/README.md, Levers log). XLA forms, without the kernels:
MATMUL_MAX_PIXELS = 512  # im2col matmuls beat YNNPACK up to here
MATMUL_MAX_OUT_CHANNELS = 8  # the image heads: YNNPACK's 3-output kernel gradient is slow
WINOGRAD_MIN_CHANNELS = 128  # jnp Winograd forward wins from here, up to
WINOGRAD_MAX_PIXELS = 64 * 64  # where its memory-bound transforms start to lose
# Inference, kernels packed once: Winograd from 32 channels, F(4x4) up to 512 -> 512, F(2x2)
# beyond. Decided by the channels alone, since packing traces the model on a small input.
PACKED_WINOGRAD_MIN_CHANNELS = 32
PACKED_WINOGRAD_MAX_KERNEL = 1024 * 1024  # C * O
PACKED_WINOGRAD_F4_MAX_KERNEL = 512 * 512
# `low_memory` packing (`compact_packing`) keeps Winograd only up to this kernel: the deep levels'
# kernels hold most of the memory and, on their small feature maps, gain least (bench/README.md).
COMPACT_WINOGRAD_MAX_KERNEL = 256 * 256
# Training, kernels transformed every step: F(4x4) from 32x32 pixels, F(2x2) on 16x16 from
# 128 -> 256 channels, direct below.
NATIVE_WINOGRAD_MIN_PIXELS = 32 * 32  # F(4x4) from here
NATIVE_WINOGRAD_F2_MIN_PIXELS = 16 * 16  # F(2x2) from here, for kernels of at least
NATIVE_WINOGRAD_F2_MIN_KERNEL = 128 * 256  # C * O
NATIVE_WINOGRAD_MAX_KERNEL = 1024 * 512


def _on_cpu(backend: str | None = None) -> bool:
  return (backend or jax.default_backend()) == 'cpu'


def _check_impl(impl: str) -> None:
  if impl not in CONV_IMPLS:
    raise ValueError(f'impl must be one of {CONV_IMPLS}, got {impl!r}.')


def conv_xla(x: Array, kernel: Array, strides: int = 1, padding: int = 1) -> Array:
  """`lax.conv` in NHWC x HWIO -> NHWC with PyTorch-style symmetric zero padding."""
  return jax.lax.conv_general_dilated(x, kernel, (strides, strides), ((padding, padding),) * 2,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def patches3x3(x: Array) -> Array:
  """im2col: (N, H, W, C) -> (N, H, W, 9C) with [.., 3i+j, c] = x[h+i-1, w+j-1, c] (zero outside)."""
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)


def shift_sum3x3(z: Array, sign: int) -> Array:
  """(N, H, W, 9C) -> (N, H, W, C): out[h, w] = sum_ij z[h + s(i-1), w + s(j-1), 3i+j], s = sign.

  sign=+1 finishes a matmul-first convolution; sign=-1 is the adjoint of `patches3x3`.
  """
  n, h, w, c9 = z.shape
  c = c9 // 9
  taps = z.reshape(n, h, w, 9, c)
  total = None
  for i in range(3):
    for j in range(3):
      di, dj = sign * (i - 1), sign * (j - 1)
      tap = jnp.pad(taps[:, :, :, 3 * i + j], ((0, 0), (1, 1), (1, 1), (0, 0)))
      tap = jax.lax.slice(tap, (0, 1 + di, 1 + dj, 0), (n, 1 + di + h, 1 + dj + w, c))
      total = tap if total is None else total + tap
  return total


def _flip_taps(kernel: Array) -> Array:
  """(k, k, C, O) -> (k, k, O, C): the kernel of the transposed convolution."""
  return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


def _matmul_conv(x: Array, kernel: Array) -> Array:
  """conv3x3 as one matmul plus 9 shifted copies of whichever side has fewer channels."""
  c, o = kernel.shape[2:]
  if c <= o:  # im2col on the input: (.., 9C) @ (9C, O).
    return jnp.einsum('nhwk,ko->nhwo', patches3x3(x), kernel.reshape(9 * c, o))
  # Matmul first, to 9 taps of O channels each, then add up each tap's shifted output.
  wide = kernel.reshape(9, c, o).transpose(1, 0, 2).reshape(c, 9 * o)
  return shift_sum3x3(jnp.einsum('nhwc,ck->nhwk', x, wide), +1)


@jax.custom_vjp
def matmul_conv3x3(x: Array, kernel: Array) -> Array:
  """3x3 stride-1 'SAME' conv as matmuls, NHWC x HWIO -> NHWC (see the module doc)."""
  return _matmul_conv(x, kernel)


def _matmul_fwd(x, kernel):
  # Save x, not its 9x larger patches: activation memory stays lax.conv's.
  return _matmul_conv(x, kernel), (x, kernel)


def _matmul_bwd(res, g):
  x, kernel = res
  c, o = kernel.shape[2:]
  if c <= o:  # Expand the C side: 9C-channel intermediates.
    dx = shift_sum3x3(jnp.einsum('nhwo,ko->nhwk', g, kernel.reshape(9 * c, o)), -1)
    dkernel = jnp.einsum('nhwk,nhwo->ko', patches3x3(x), g).reshape(kernel.shape)
  else:  # Expand the O side: the same products with the roles of x and g swapped.
    dx = _matmul_conv(g, _flip_taps(kernel))
    # dW[i, j, c, o] = sum_p x[p, c] g[p - (i-1, j-1), o]: x^T times g's taps, flipped.
    gtaps = patches3x3(g).reshape(*g.shape[:3], 3, 3, o)[:, :, :, ::-1, ::-1]
    dkernel = jnp.einsum('nhwc,nhwijo->ijco', x, gtaps)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


matmul_conv3x3.defvjp(_matmul_fwd, _matmul_bwd)


def _backward(x: Array, kernel: Array, g: Array, strides: int, padding: int, native: bool,
              input_grad: bool = True):
  """(dx or None, dkernel) by `cpu_kernels` in one call if `native`, else by `lax.conv`."""
  if native:
    return cpu_kernels.conv_grads(x, g, kernel, strides, padding, input_grad=input_grad)
  dx, dkernel = jax.vjp(functools.partial(conv_xla, strides=strides, padding=padding), x,
                        kernel)[1](g)
  return (dx if input_grad else None), dkernel


# Symbolic zeros tell the forward rules whether the input is differentiated, so the backward
# skips the image's input gradient; residuals carry that bit statically (`()` or None).
def _is_zero(g) -> bool:
  return isinstance(g, jax.custom_derivatives.SymbolicZero)


def _add_bias(y: Array, bias: Array | None) -> Array:
  return y if bias is None else y + bias


def _bias_grad(g: Array, has_bias: bool) -> Array | None:
  return jnp.sum(g, axis=(0, 1, 2)) if has_bias else None


def _marker(flag: bool):
  return () if flag else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _custom_conv(x: Array, kernel: Array, bias: Array | None, strides: int, padding: int,
                 winograd: str | int | None, native_backward: bool) -> Array:
  """A conv on `cpu_kernels`, or by Winograd: jnp F(2x2) if `winograd='jnp'`, else the CPU
  kernels' with tile `winograd` (2 or 4; both gradients too)."""
  if winograd == 'jnp':
    return _add_bias(winograd_conv3x3(x, kernel, x.dtype), bias)
  if winograd:
    return cpu_kernels.winograd_conv(x, cpu_kernels.pack_winograd(kernel, winograd),
                                     kernel.shape[-1], bias)
  return cpu_kernels.conv_forward(x, kernel, strides, padding, bias=bias)


def _custom_fwd(x, kernel, bias, strides, padding, winograd, native_backward):
  bias_value = None if bias is None else bias.value
  y = _custom_conv(x.value, kernel.value, bias_value, strides, padding, winograd, native_backward)
  return y, (x.value, kernel.value, _marker(x.perturbed), _marker(bias is not None))


def _custom_bwd(strides, padding, winograd, native_backward, res, g):
  x, kernel, input_grad, has_bias = res
  if _is_zero(g):
    return None, None, None
  if winograd and winograd != 'jnp':
    dx, dkernel = cpu_kernels.winograd_conv_grads(x, g, kernel, winograd, input_grad is not None)
  else:
    dx, dkernel = _backward(x, kernel, g, strides, padding, native_backward,
                            input_grad is not None)
  return dx, dkernel, _bias_grad(g, has_bias is not None)


_custom_conv.defvjp(_custom_fwd, _custom_bwd, symbolic_zeros=True)


def native_conv(x: Array, kernel: Array, strides: int, padding: int,
                bias: Array | None = None) -> Array:
  """A conv (+ bias) on `cpu_kernels` both ways, by Winograd where `_native_winograd_tile` says."""
  tile = _native_winograd_tile(x.shape, kernel.shape, strides, padding)
  return _custom_conv(x, kernel, bias, strides, padding, tile or None, True)


def _native_winograd_tile(x_shape: tuple, kernel_shape: tuple, strides: int,
                          padding: int) -> int:
  """`native_conv`'s Winograd tile (2 or 4), or 0 for the direct conv (`NATIVE_WINOGRAD_*`)."""
  c, o = kernel_shape[2:]
  pixels = x_shape[1] * x_shape[2]
  if not (cpu_kernels.winograd_applies(x_shape, kernel_shape, strides, padding)
          and min(c, o) >= PACKED_WINOGRAD_MIN_CHANNELS and c * o <= NATIVE_WINOGRAD_MAX_KERNEL):
    return 0
  if pixels >= NATIVE_WINOGRAD_MIN_PIXELS:
    return 4
  if pixels >= NATIVE_WINOGRAD_F2_MIN_PIXELS and c * o >= NATIVE_WINOGRAD_F2_MIN_KERNEL:
    return 2
  return 0


def _epilogue(y: Array, relu_slope: float | None, residual: Array | None) -> Array:
  if relu_slope is not None:
    y = jax.nn.leaky_relu(y, relu_slope)
  return y if residual is None else y + residual


def _join(x: Array, x2: Array | None) -> Array:
  return x if x2 is None else jnp.concatenate([x, x2], axis=-1)


def _joined_shape(x: Array, x2: Array | None):
  """The shape and dtype of `_join(x, x2)`, without computing it."""
  if x2 is None:
    return x
  return jax.ShapeDtypeStruct((*x.shape[:-1], x.shape[-1] + x2.shape[-1]), x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _native_conv_epilogue(x: Array, kernel: Array, bias: Array | None, residual: Array | None,
                          x2: Array | None, strides: int, padding: int,
                          relu_slope: float | None) -> Array:
  """`_epilogue(native_conv(_join(x, x2), ...))` in one pass over the output; differentiated, it
  runs unfused, since the backward needs what the fused forward never writes."""
  return cpu_kernels.conv_forward(x, kernel, strides, padding, bias=bias, relu_slope=relu_slope,
                                  residual=residual, x2=x2)


def _unfused_epilogue(x, kernel, bias, residual, x2, strides, padding, relu_slope):
  return _epilogue(native_conv(_join(x, x2), kernel, strides, padding, bias), relu_slope,
                   residual)


def _epilogue_fwd(x, kernel, bias, residual, x2, strides, padding, relu_slope):
  return jax.vjp(functools.partial(_unfused_epilogue, strides=strides, padding=padding,
                                   relu_slope=relu_slope), x, kernel, bias, residual, x2)


def _epilogue_bwd(strides, padding, relu_slope, vjp_fn, g):
  del strides, padding, relu_slope
  return vjp_fn(g)


_native_conv_epilogue.defvjp(_epilogue_fwd, _epilogue_bwd)


def _native(x: Array, kernel: Array, strides: int, padding: int, bias: Array | None,
            relu_slope: float | None, residual: Array | None, x2: Array | None = None) -> Array:
  if relu_slope is None and residual is None and x2 is None:
    return native_conv(x, kernel, strides, padding, bias)
  return _native_conv_epilogue(x, kernel, bias, residual, x2, strides, padding, relu_slope)


_PACKED_IS_FOR_INFERENCE = (
    'A convolution was given its kernel prepacked (`cpu.prepare_inference`, the inference '
    "variables' 'packed' collection), which cannot be differentiated: apply the model with its "
    "'params' alone to train or take gradients.")


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _prepacked_conv(x: Array, kernel: Array, packed: Array, bias: Array | None,
                    residual: Array | None, x2: Array | None, strides: int, padding: int,
                    relu_slope: float | None) -> Array:
  return cpu_kernels.conv_forward(x, kernel, strides, padding, bias=bias, relu_slope=relu_slope,
                                  residual=residual, packed=packed, x2=x2)


def _not_differentiable(*args):
  """The VJP rules of the prepacked calls: differentiating them is an error."""
  del args
  raise ValueError(_PACKED_IS_FOR_INFERENCE)


_prepacked_conv.defvjp(_not_differentiable, _not_differentiable)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _prepacked_winograd(x: Array, kernel: Array, packed: Array, bias: Array | None,
                        residual: Array | None, x2: Array | None,
                        relu_slope: float | None) -> Array:
  return cpu_kernels.winograd_conv(x, packed, kernel.shape[-1], bias, relu_slope, residual, x2)


_prepacked_winograd.defvjp(_not_differentiable, _not_differentiable)


def winograd_conv(x: Array, kernel: Array, native_backward: bool,
                  bias: Array | None = None) -> Array:
  """3x3/s1/p1 conv: Winograd F(2x2, 3x3) forward; backward on `cpu_kernels` or `lax.conv`."""
  return _custom_conv(x, kernel, bias, 1, 1, 'jnp', native_backward)


def native_applies(x: Array, kernel: Array) -> bool:
  """Whether `cpu_kernels` can run this conv (the first call builds them)."""
  return (_on_cpu() and x.dtype == jnp.float32 and kernel.dtype == jnp.float32
          and kernel.shape[0] == kernel.shape[1] <= cpu_kernels.MAX_KERNEL_SIZE
          and all(isinstance(d, int) for d in (*x.shape, *kernel.shape))
          and cpu_kernels.available())


def _auto_native(x: Array, kernel: Array) -> bool:
  """'auto' uses `cpu_kernels` wherever they apply (the backend keeps them to one device)."""
  return native_applies(x, kernel)


def _runs_native(x: Array, kernel: Array, strides: int, padding: int, impl: str) -> bool:
  """Whether `conv` runs this convolution on `cpu_kernels` ('native' raises where it cannot)."""
  _check_impl(impl)
  if impl == 'native':
    _require_native(x, kernel)
    return True
  if impl != 'auto':
    return False
  if (*kernel.shape[:2], strides, padding) == (3, 3, 1, 1):
    return auto_impl(x.shape, kernel.shape[-1], native=_auto_native(x, kernel)) == 'native'
  return _auto_native(x, kernel)


def pack_for_conv(x: Array, kernel: Array, strides: int = 1, padding: int = 0,
                  impl: str = 'xla', x2: Array | None = None) -> Array | None:
  """`kernel` packed for `conv(..., packed=)` (Winograd-transformed where that runs it), or None
  where the convolution does not run on the CPU kernels."""
  if not _runs_native(_joined_shape(x, x2), kernel, strides, padding, impl):
    return None
  tile = _packed_winograd_tile(x, x2, kernel, strides, padding)
  if tile:
    return cpu_kernels.pack_winograd(kernel, tile)
  return cpu_kernels.pack_kernel(kernel)


def compact_packing(kernel: Array, packed: Array) -> Array:
  """`packed` (`pack_for_conv`'s), or the direct packing of `kernel` where that is a Winograd
  packing of a kernel over `COMPACT_WINOGRAD_MAX_KERNEL`: the same convolution in less memory."""
  c, o = kernel.shape[2:]
  if kernel.shape[:2] == (3, 3) and c * o > COMPACT_WINOGRAD_MAX_KERNEL and \
      cpu_kernels.winograd_tile_of(packed, c, o):
    return cpu_kernels.pack_kernel(kernel)
  return packed


def _packed_winograd_tile(x: Array, x2: Array | None, kernel: Array, strides: int,
                          padding: int) -> int:
  """A prepacked conv's Winograd tile (2 or 4) or 0, from channels and geometry alone."""
  c, o = kernel.shape[2:]
  if not (cpu_kernels.winograd_applies(_joined_shape(x, x2).shape, kernel.shape, strides,
                                       padding, None if x2 is None else x.shape[-1])
          and min(c, o) >= PACKED_WINOGRAD_MIN_CHANNELS and c * o <= PACKED_WINOGRAD_MAX_KERNEL):
    return 0
  return 4 if c * o <= PACKED_WINOGRAD_F4_MAX_KERNEL else 2


def pack_for_upconv(x: Array, kernel: Array, impl: str = 'xla') -> Array | None:
  """`kernel` packed for `upconv2x2(..., packed=)`, or None off the CPU kernels."""
  if not _runs_native_upconv(x, kernel, impl):
    return None
  return cpu_kernels.pack_kernel(kernel, 'HWOI', transposed=True)


def _require_packed_native(runs_native: bool) -> None:
  if not runs_native:
    raise ValueError('A kernel was given prepacked for a convolution that does not run on the '
                     'CPU kernels here (other backend, dtype or device count than when it was '
                     'packed): prepare again (`cpu.prepare_inference`) where it runs, or apply the '
                     "model with its 'params' alone.")


def _require_native(x: Array, kernel: Array) -> None:
  if not native_applies(x, kernel):
    raise ValueError(
        "impl='native' needs the CPU backend, float32, a square kernel up to 8x8, static "
        f'shapes and the hinet_jax CPU kernels built (backend {jax.default_backend()}, '
        f'{x.dtype} x {kernel.dtype}, kernel {kernel.shape}, kernels built: '
        f"{cpu_kernels.available()}). Use impl='auto', which picks a form that runs here.")


def auto_impl(shape: tuple, features: int, backend: str | None = None,
              native: bool = False) -> str:
  """The fastest measured 3x3 conv form ('xla', 'winograd', 'matmul' or 'native') for an NHWC
  input `shape` and `features` outputs; `native`: whether `cpu_kernels` can run it."""
  if not _on_cpu(backend) or not all(isinstance(d, int) for d in (*shape, features)):
    return 'xla'  # Symbolic (exported) shapes: no measured choice applies.
  n, h, w, c = shape
  if features <= MATMUL_MAX_OUT_CHANNELS < c:  # e.g. the 3-channel image heads.
    return 'matmul'
  if native:
    return 'native'
  if n * h * w <= MATMUL_MAX_PIXELS and min(c, features) >= 64:
    return 'matmul'
  if h * w <= WINOGRAD_MAX_PIXELS and min(c, features) >= WINOGRAD_MIN_CHANNELS:
    return 'winograd'
  return 'xla'


@jax.custom_vjp
def native_upconv2x2(x: Array, kernel: Array, bias: Array | None = None) -> Array:
  """`upconv2x2` on `cpu_kernels`: the input gradient of the 2x2/stride-2 conv whose kernel is
  this one stored 'HWOI' (its gradients are that conv's forward and kernel gradient)."""
  n, h, w, _ = x.shape
  return cpu_kernels.conv_input_grad(x, kernel, (n, 2 * h, 2 * w, kernel.shape[-1]), 2, 0, 'HWOI',
                                     bias=bias)


def _upconv_fwd(x, kernel, bias):
  bias_value = None if bias is None else bias.value
  return native_upconv2x2(x.value, kernel.value, bias_value), (
      x.value, kernel.value, _marker(x.perturbed), _marker(bias is not None))


def _upconv_bwd(res, g):
  x, kernel, input_grad, has_bias = res
  if _is_zero(g):
    return None, None, None
  dx, dkernel = cpu_kernels.transposed_conv_grads(x, g, kernel, 2, 0, 'HWOI',
                                                  input_grad is not None)
  return dx, dkernel, _bias_grad(g, has_bias is not None)


native_upconv2x2.defvjp(_upconv_fwd, _upconv_bwd, symbolic_zeros=True)


@jax.custom_vjp
def _prepacked_upconv2x2(x: Array, kernel: Array, packed: Array, bias: Array | None) -> Array:
  n, h, w, _ = x.shape
  return cpu_kernels.conv_input_grad(x, kernel, (n, 2 * h, 2 * w, kernel.shape[-1]), 2, 0, 'HWOI',
                                     bias=bias, packed=packed)


_prepacked_upconv2x2.defvjp(_not_differentiable, _not_differentiable)


def matmul_upconv2x2(x: Array, kernel: Array) -> Array:
  """`upconv2x2` (without bias) as one matmul per output row parity and an interleave, which
  XLA fuses; one einsum needed a transpose copy (bench/README.md)."""
  n, h, w, _ = x.shape
  o = kernel.shape[-1]
  # Under explicit mesh axes a merging reshape needs its output sharding: only the batch's.
  batch_spec = jax.typeof(x).sharding.spec
  out_sharding = jax.P(batch_spec[0]) if batch_spec and batch_spec[0] is not None else None
  rows = [jax.lax.reshape(jnp.einsum('nhwc,bco->nhwbo', x, kernel[a]), (n, h, 2 * w, o),
                          out_sharding=out_sharding)
          for a in range(2)]
  return jax.lax.reshape(jnp.stack(rows, axis=2), (n, 2 * h, 2 * w, o), out_sharding=out_sharding)


def _runs_native_upconv(x: Array, kernel: Array, impl: str) -> bool:
  _check_impl(impl)
  if impl == 'native':
    _require_native(x, kernel)
  return impl == 'native' or (impl == 'auto' and _auto_native(x, kernel))


def upconv2x2(x: Array, kernel: Array, impl: str = 'xla', bias: Array | None = None,
              packed: Array | None = None) -> Array:
  """PyTorch's `ConvTranspose2d(C, O, 2, stride=2)`, NHWC: on `cpu_kernels` where 'native' or
  'auto' runs them, else as matmuls (faster than XLA's transposed convolution).

  Args:
    x: (N, H, W, C).
    kernel: (2, 2, C, O), torch weight (C, O, 2, 2).transpose(2, 3, 0, 1), no spatial flip.
    impl: one of `CONV_IMPLS`.
    bias: optional (O,).
    packed: optional `pack_for_upconv(x, kernel, impl)` (inference: not differentiable).

  Returns:
    (N, 2H, 2W, O).
  """
  runs_native = _runs_native_upconv(x, kernel, impl)
  if packed is not None:
    _require_packed_native(runs_native)
    return _prepacked_upconv2x2(x, kernel, packed, bias)
  if runs_native:
    return native_upconv2x2(x, kernel, bias)
  return _add_bias(matmul_upconv2x2(x, kernel), bias)


def pointwise_conv(x: Array, kernel: Array) -> Array:
  """1x1 convolution as a matmul over channels: NHWC x (1, 1, C, O) -> NHWC."""
  return jnp.einsum('nhwc,co->nhwo', x, kernel[0, 0])


def conv(x: Array, kernel: Array, strides: int = 1, padding: int = 0, impl: str = 'xla',
         bias: Array | None = None, relu_slope: float | None = None,
         residual: Array | None = None, packed: Array | None = None,
         x2: Array | None = None) -> Array:
  """Any HINet convolution (NHWC x HWIO, symmetric zero padding) in the form `impl` picks.

  3x3/s1/p1 convs go through `conv3x3`; others run on the CPU kernels where 'native' or 'auto'
  runs them, else 1x1 as one matmul on CPU (bench/README.md) and the rest as `lax.conv`.

  Args:
    x: (N, H, W, C) input.
    kernel: (kh, kw, C, O) kernel, same dtype as `x`.
    strides, padding: the same in both spatial dims.
    impl: one of `CONV_IMPLS`.
    bias: optional (O,).
    relu_slope: if given, LeakyReLU with this negative slope after the bias.
    residual: optional, shaped as the output, added last.
    packed: optional `pack_for_conv(...)` of the same arguments (inference: not differentiable).
    x2: optional (N, H, W, C2) joined after `x` along the channels (read in place by the kernels).

  Returns:
    (N, H', W', O).
  """
  _check_impl(impl)
  if packed is not None:
    _require_packed_native(_runs_native(_joined_shape(x, x2), kernel, strides, padding, impl))
    if kernel.shape[:2] == (3, 3) and cpu_kernels.winograd_tile_of(packed, *kernel.shape[2:]):
      return _prepacked_winograd(x, kernel, packed, bias, residual, x2, relu_slope)
    return _prepacked_conv(x, kernel, packed, bias, residual, x2, strides, padding, relu_slope)
  if x2 is not None:
    if _runs_native(_joined_shape(x, x2), kernel, strides, padding, impl):
      return _native(x, kernel, strides, padding, bias, relu_slope, residual, x2)
    x = _join(x, x2)
  kh, kw = kernel.shape[:2]
  if (kh, kw, strides, padding) == (3, 3, 1, 1):
    return conv3x3(x, kernel, impl, bias, relu_slope, residual)
  if impl == 'native':
    _require_native(x, kernel)
  if impl == 'native' or (impl == 'auto' and _auto_native(x, kernel)):
    return _native(x, kernel, strides, padding, bias, relu_slope, residual)
  if (kh, kw, strides, padding) == (1, 1, 1, 0) and impl != 'xla' and _on_cpu():
    return _epilogue(_add_bias(pointwise_conv(x, kernel), bias), relu_slope, residual)
  return _epilogue(_add_bias(conv_xla(x, kernel, strides, padding), bias), relu_slope, residual)


def conv3x3(x: Array, kernel: Array, impl: str = 'xla', bias: Array | None = None,
            relu_slope: float | None = None, residual: Array | None = None) -> Array:
  """3x3, stride-1, padding-1 `conv` in the form `impl` ('auto' picks by shape: `auto_impl`)."""
  _check_impl(impl)
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f'conv3x3 needs a (3, 3, C, O) kernel, got {kernel.shape}.')
  if impl == 'auto':
    impl = auto_impl(x.shape, kernel.shape[-1], native=_auto_native(x, kernel))
  if impl == 'native':
    _require_native(x, kernel)
    return _native(x, kernel, 1, 1, bias, relu_slope, residual)
  if impl == 'matmul':
    y = _add_bias(matmul_conv3x3(x, kernel), bias)
  elif impl == 'winograd':
    y = winograd_conv(x, kernel, _auto_native(x, kernel), bias)
  else:
    y = _add_bias(conv_xla(x, kernel), bias)
  return _epilogue(y, relu_slope, residual)


# XLA's own (Eigen) convolutions run the forward faster than YNNPACK but kernel gradients slower
# (bench/README.md): for forward-only executables. Dots stay on YNNPACK.
_EIGEN_CONVOLUTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


def inference_compiler_options() -> dict | None:
  """`jax.jit` compiler options for forward-only executables on CPU, else None."""
  return dict(_EIGEN_CONVOLUTIONS) if _on_cpu() else None
