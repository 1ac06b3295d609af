"""How each HINet convolution runs on CPU: the forms, and the per-shape policy that picks one.

XLA:CPU lowers `lax.conv` to YNNPACK direct convolutions, which are slow on some of HINet's
shapes: small images with many channels (the deep U-Net levels), 1x1 convs, and kernel
gradients. Other forms of the same linear map win there (bench/README.md):

  * 'native': the hand-written CPU kernels of `kernels` (imported as `cpu_kernels`; XLA FFI
    custom calls): the forward (with the bias added inside), and both gradients in one backward
    call. They run every HINet conv (3x3, 1x1, the 4x4/stride-2 downsamples and the decoder's
    2x2/stride-2 transposed convs, `upconv2x2`); the 3x3 ones from 16x16 pixels and 32 channels
    (`_native_winograd_tile`) by their Winograd F(4x4, 3x3) or F(2x2, 3x3), forward and both
    gradients (`native_conv`).
  * 'matmul' (3x3): one matmul plus 9 shifted copies of whichever side has fewer channels: im2col
    (`patches3x3`) when C <= O, matmul-then-shifted-adds (`shift_sum3x3`) when C > O. Its
    backward is written by hand (`custom_vjp`) in the same two shapes, so no kernel flip or
    transpose is materialised. Fast while the copies are small: few pixels, or few channels.
  * 'winograd' (3x3): Winograd F(2x2, 3x3) forward (`winograd.winograd_conv3x3`, 2.25x fewer
    multiplies) with the backward of 'native' where 'auto' would use it, else of `lax.conv`
    (autodiff of the Winograd transforms is slow on XLA:CPU at every size but the deepest).
  * 1x1 convs as one matmul (`pointwise_conv`).
  * 'xla': `lax.conv` both ways.

'auto' (`auto_impl`) uses 'native' for every conv where the kernels apply (one device, float32,
built: `native_applies`) but the convs to an image (3 outputs), which run as matmuls. Without the
kernels (no C++ compiler, several devices) it picks among the XLA forms per shape, as measured
(bench/README.md, Levers log). On GPU and TPU, 'auto' is always `lax.conv` (cuDNN and the TPU
convolution units need no help). Every form agrees with `lax.conv` to float32 rounding
(tests/test_cpu_convolution.py).

For inference the CPU kernels can take each kernel packed beforehand (`pack_for_conv`,
`pack_for_upconv`, and `conv(..., packed=)`): `hinet_jax.cpu.prepare_inference` packs a model's
once per set of weights instead of in every call. The 3x3 convolutions from 32 channels are then
packed transformed and run as the CPU kernels' own Winograd F(4x4, 3x3) or F(2x2, 3x3)
(`cpu_kernels.winograd_conv`, `PACKED_WINOGRAD_*` below), faster than their direct convolution
and equal to it up to float rounding. Such calls are not differentiable.

Separately, `inference_compiler_options` moves the convolutions of forward-only executables from
YNNPACK to XLA's own kernels, which run the XLA forms of the HINet forward faster on CPU.
"""

import functools

import jax
import jax.numpy as jnp

from hinet_jax.cpu import kernels as cpu_kernels
from hinet_jax.cpu.winograd import winograd_conv3x3

Array = jax.Array

CONV_IMPLS = ('xla', 'winograd', 'matmul', 'native', 'auto')

# 'auto' thresholds of the XLA forms, from per-conv timings (bench/README.md, Levers log).
# im2col matmuls beat YNNPACK, forward and backward, while the image is this small.
MATMUL_MAX_PIXELS = 512
# Convs to a few channels (the image heads) as matmul + shifted adds: YNNPACK's kernel gradient
# with 3 outputs is slow.
MATMUL_MAX_OUT_CHANNELS = 8
# The jnp Winograd forward beats YNNPACK from 128 channels on images up to 64x64 pixels; on
# larger images its memory-bound transforms cost more than the multiplies they save.
WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MAX_PIXELS = 64 * 64
# With the CPU kernels ('native') 'auto' uses them for every conv but those to an image (above):
# on every other HINet shape they matched or beat the other forms in the train step.
# Inference (kernels packed once per set of weights, so the Winograd kernel transform is free):
# the 3x3/stride-1 convs from 32 channels run by the CPU kernels' Winograd, F(4x4, 3x3) up to
# 512 -> 512 channels and F(2x2, 3x3) beyond up to 1024 -> 1024, where F(4x4)'s larger
# transformed kernel, streamed from memory, costs about what it saves. Decided by the channels
# alone: packing traces the model on a small input (`prepare_inference`). Timings and the packed
# kernels' memory: bench/README.md.
PACKED_WINOGRAD_MIN_CHANNELS = 32
PACKED_WINOGRAD_MAX_KERNEL = 1024 * 1024  # C * O
PACKED_WINOGRAD_F4_MAX_KERNEL = 512 * 512
# Training (the kernels change every step, so the transform is paid in every call, in C++; both
# gradients by Winograd too): F(4x4) from 32x32 pixels at every width, F(2x2) on 16x16 images
# from 128 -> 256 channels, direct below and on 8x8 images (bench/README.md).
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

  With sign=+1 this finishes a convolution whose matmul ran first (z = x @ kernel per tap); with
  sign=-1 it is the adjoint of `patches3x3` (each tap's value added back where it was read).
  """
  n, h, w, c9 = z.shape
  c = c9 // 9
  taps = z.reshape(n, h, w, 9, c)
  total = None
  for i in range(3):
    for j in range(3):
      di, dj = sign * (i - 1), sign * (j - 1)
      # out[h] = tap[h + di]: pad the tap by 1 on each side and read the window starting at 1+di.
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
  # Save x, not its 9x larger patches: rebuilding them in the backward is cheap at the sizes
  # 'auto' uses this for, and it keeps activation memory equal to lax.conv's.
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
  """Input and kernel gradients of a conv: with `cpu_kernels` (one call) if `native`, else
  `lax.conv`'s. Without `input_grad` the input gradient is None (zero)."""
  if native:
    return cpu_kernels.conv_grads(x, g, kernel, strides, padding, input_grad=input_grad)
  dx, dkernel = jax.vjp(functools.partial(conv_xla, strides=strides, padding=padding), x,
                        kernel)[1](g)
  return (dx if input_grad else None), dkernel


# The custom VJPs below take symbolic zeros: their forward rules learn whether the input is
# being differentiated (`perturbed`), so that the backward skips the input gradient of the
# network's first convolutions (of the image) inside the one backward call. The residuals carry
# that bit in their structure (`()` or None), which is static.
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
  """Forward on `cpu_kernels` with the bias added inside, or for a 3x3/s1/p1 conv by Winograd:
  F(2x2, 3x3) in jnp (`winograd='jnp'`), or the CPU kernels' F(tile x tile, 3x3) (`winograd` the
  tile, 2 or 4; both gradients so too); `_backward`."""
  if winograd == 'jnp':
    return _add_bias(winograd_conv3x3(x, kernel, x.dtype), bias)
  if winograd:  # The kernel transformed in every call (training: it changes every step).
    return cpu_kernels.winograd_conv(x, cpu_kernels.pack_winograd(kernel, winograd),
                                     kernel.shape[-1], bias)
  return cpu_kernels.conv_forward(x, kernel, strides, padding, bias=bias)


def _custom_fwd(x, kernel, bias, strides, padding, winograd, native_backward):
  # With symbolic zeros, array arguments come as CustomVJPPrimal; a missing bias stays None.
  bias_value = None if bias is None else bias.value
  y = _custom_conv(x.value, kernel.value, bias_value, strides, padding, winograd, native_backward)
  return y, (x.value, kernel.value, _marker(x.perturbed), _marker(bias is not None))


def _custom_bwd(strides, padding, winograd, native_backward, res, g):
  x, kernel, input_grad, has_bias = res
  if _is_zero(g):
    return None, None, None
  if winograd and winograd != 'jnp':  # Both gradients by the CPU kernels' Winograd as well.
    dx, dkernel = cpu_kernels.winograd_conv_grads(x, g, kernel, winograd, input_grad is not None)
  else:  # Every other forward form computes the same linear map as the direct conv.
    dx, dkernel = _backward(x, kernel, g, strides, padding, native_backward,
                            input_grad is not None)
  return dx, dkernel, _bias_grad(g, has_bias is not None)


_custom_conv.defvjp(_custom_fwd, _custom_bwd, symbolic_zeros=True)


def native_conv(x: Array, kernel: Array, strides: int, padding: int,
                bias: Array | None = None) -> Array:
  """A conv (+ bias) on `cpu_kernels` (CPU, float32, square kernel), forward and backward: the
  3x3 ones where `_native_winograd_tile` says by Winograd (forward and both gradients)."""
  tile = _native_winograd_tile(x.shape, kernel.shape, strides, padding)
  return _custom_conv(x, kernel, bias, strides, padding, tile or None, True)


def _native_winograd_tile(x_shape: tuple, kernel_shape: tuple, strides: int,
                          padding: int) -> int:
  """The Winograd tile (2 or 4) `native_conv` runs this conv with, or 0 for the direct conv
  (module constants `NATIVE_WINOGRAD_*`)."""
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
  """LeakyReLU with `relu_slope` (if given), then + `residual` (if given)."""
  if relu_slope is not None:
    y = jax.nn.leaky_relu(y, relu_slope)
  return y if residual is None else y + residual


def _join(x: Array, x2: Array | None) -> Array:
  """`x` and `x2` (if given) concatenated along the channels."""
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
  """`_epilogue(native_conv(_join(x, x2), ...))` in one pass over the output: the C++ kernels
  read x and x2 where they are (no concatenated copy), apply the LeakyReLU and add the residual
  as they store (no pass of XLA's reading the conv's output back). Differentiated, it runs
  unfused (`_unfused_epilogue`): the backward needs what the fused forward never writes."""
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
  """The `_native` convolution (with its epilogue and join) reading `packed` (`pack_for_conv`)."""
  return cpu_kernels.conv_forward(x, kernel, strides, padding, bias=bias, relu_slope=relu_slope,
                                  residual=residual, packed=packed, x2=x2)


def _not_differentiable(*args):
  """The VJP rules of the prepacked calls: differentiating them is an error (the forward rule
  raises, so the backward one never runs)."""
  del args
  raise ValueError(_PACKED_IS_FOR_INFERENCE)


_prepacked_conv.defvjp(_not_differentiable, _not_differentiable)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _prepacked_winograd(x: Array, kernel: Array, packed: Array, bias: Array | None,
                        residual: Array | None, x2: Array | None,
                        relu_slope: float | None) -> Array:
  """The 3x3 convolution (with its epilogue and join) by Winograd, reading `packed`
  (`pack_for_conv`)."""
  return cpu_kernels.winograd_conv(x, packed, kernel.shape[-1], bias, relu_slope, residual, x2)


_prepacked_winograd.defvjp(_not_differentiable, _not_differentiable)


def winograd_conv(x: Array, kernel: Array, native_backward: bool,
                  bias: Array | None = None) -> Array:
  """3x3/s1/p1 conv: Winograd F(2x2, 3x3) forward; backward on `cpu_kernels` or `lax.conv`."""
  return _custom_conv(x, kernel, bias, 1, 1, 'jnp', native_backward)


def kernels_may_run() -> bool:
  """Whether any convolution can run on `cpu_kernels` here (CPU backend, kernels built): else
  there is nothing to pack (`pack_for_conv`)."""
  return _on_cpu() and cpu_kernels.available()


def native_applies(x: Array, kernel: Array) -> bool:
  """Whether `cpu_kernels` can run this conv: CPU backend, float32, square kernel up to 8x8,
  static shapes, and the kernels built (the first call builds them)."""
  return (_on_cpu() and x.dtype == jnp.float32 and kernel.dtype == jnp.float32
          and kernel.shape[0] == kernel.shape[1] <= cpu_kernels.MAX_KERNEL_SIZE
          and all(isinstance(d, int) for d in (*x.shape, *kernel.shape))
          and cpu_kernels.available())


def _auto_native(x: Array, kernel: Array) -> bool:
  """Whether 'auto' uses `cpu_kernels`: wherever they apply. (The backend runs these layers on one
  device only: XLA's partitioner cannot split the kernels' custom calls.)"""
  return native_applies(x, kernel)


def _runs_native(x: Array, kernel: Array, strides: int, padding: int, impl: str) -> bool:
  """Whether `conv` runs this convolution on `cpu_kernels` (for `impl` 'native', raises where
  they cannot)."""
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
  """`kernel` packed for `conv(x, kernel, strides, padding, impl, packed=..., x2=x2)`, or None
  where that convolution does not run on the CPU kernels (nothing to pack): transformed for
  Winograd where that runs it (`_packed_winograd_tile`), else as the direct convolution reads it."""
  if not _runs_native(_joined_shape(x, x2), kernel, strides, padding, impl):
    return None
  tile = _packed_winograd_tile(x, x2, kernel, strides, padding)
  if tile:
    return cpu_kernels.pack_winograd(kernel, tile)
  return cpu_kernels.pack_kernel(kernel)


def _packed_winograd_tile(x: Array, x2: Array | None, kernel: Array, strides: int,
                          padding: int) -> int:
  """The Winograd tile (2 or 4) a prepacked convolution runs with, or 0 for the direct
  convolution (module doc): `pack_for_conv` and `conv` decide alike, from the channels and the
  geometry alone."""
  c, o = kernel.shape[2:]
  if not (cpu_kernels.winograd_applies(_joined_shape(x, x2).shape, kernel.shape, strides,
                                       padding, None if x2 is None else x.shape[-1])
          and min(c, o) >= PACKED_WINOGRAD_MIN_CHANNELS and c * o <= PACKED_WINOGRAD_MAX_KERNEL):
    return 0
  return 4 if c * o <= PACKED_WINOGRAD_F4_MAX_KERNEL else 2


def pack_for_upconv(x: Array, kernel: Array, impl: str = 'xla') -> Array | None:
  """`kernel` packed for `upconv2x2(x, kernel, impl, packed=...)`, or None where that does not
  run on the CPU kernels."""
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
  """The fastest measured 3x3 conv form for an NHWC input `shape` and `features` outputs
  (module doc).

  Args:
    shape: (N, H, W, C) of the input.
    features: output channels O.
    backend: JAX backend name; defaults to `jax.default_backend()`.
    native: whether `cpu_kernels` can run it (`native_applies`).

  Returns:
    'xla', 'winograd', 'matmul' or 'native'.
  """
  if not _on_cpu(backend) or not all(isinstance(d, int) for d in (*shape, features)):
    return 'xla'  # Symbolic (shape-polymorphic export) shapes: no measured choice applies.
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
  """`upconv2x2` on `cpu_kernels`: the transposed convolution is the input gradient of the
  2x2/stride-2 convolution whose kernel is this one stored (k, k, O, C), so its forward, input
  gradient and kernel gradient are that convolution's input gradient, forward and kernel gradient
  (with the roles of image and cotangent swapped). The bias is added inside the kernel."""
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
  """`native_upconv2x2` reading `packed` (`pack_for_upconv`)."""
  n, h, w, _ = x.shape
  return cpu_kernels.conv_input_grad(x, kernel, (n, 2 * h, 2 * w, kernel.shape[-1]), 2, 0, 'HWOI',
                                     bias=bias, packed=packed)


_prepacked_upconv2x2.defvjp(_not_differentiable, _not_differentiable)


def matmul_upconv2x2(x: Array, kernel: Array) -> Array:
  """`upconv2x2` (without bias) as matmuls and a depth-to-space, in XLA.

  One matmul per output row parity a: (n, h, w, b, o) is already (n, h, 2w, o) in memory, so only
  the final interleave of the two row sets moves data, and XLA fuses it with what follows. The
  single einsum 'nhwc,abco->nhawbo' needed a separate transpose copy (bench/README.md).
  """
  n, h, w, _ = x.shape
  o = kernel.shape[-1]
  # Under explicit mesh axes a reshape that merges dims must be told its output sharding; only
  # the batch dim is ever sharded, and it is untouched by the depth-to-space.
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
  """PyTorch's `ConvTranspose2d(C, O, 2, stride=2)`, NHWC, kernel (2, 2, C, O).

  With kernel == stride the output windows don't overlap: output pixel (2i+a, 2j+b) is input
  pixel (i, j) times tap (a, b). On `cpu_kernels` under 'native', and under 'auto' where they
  apply (`native_upconv2x2`); else as matmuls (`matmul_upconv2x2`), which XLA runs faster than a
  general transposed convolution.

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

  3x3/stride-1/padding-1 convs go through `conv3x3`. Others (1x1, the 4x4/stride-2 downsamples)
  run on the CPU kernels under 'native', and under 'auto' where they apply; else, on CPU under
  any `impl` but 'xla', 1x1 convs run as one matmul (`pointwise_conv`, faster than YNNPACK's 1x1
  convolution both ways: bench/README.md), and everything else is `lax.conv`.

  Args:
    x: (N, H, W, C) input.
    kernel: (kh, kw, C, O) kernel, same dtype as `x`.
    strides: stride in both spatial dims.
    padding: zero padding on each side.
    impl: one of `CONV_IMPLS`.
    bias: optional (O,), added to every output pixel (inside the CPU kernels, where they run).
    relu_slope: if given, LeakyReLU with this negative slope on the result (+ bias).
    residual: optional array shaped as the output, added last. With the CPU kernels both run
      inside the convolution's own pass over its output (`_native_conv_epilogue`).
    packed: optional `pack_for_conv(x, kernel, strides, padding, impl, x2=x2)`, read instead of
      packing the kernel in the call (inference: not differentiable).
    x2: optional (N, H, W, C2): the input is `x` and `x2` concatenated along the channels (the
      kernel has C + C2 input channels). The CPU kernels read both where they are, with no
      concatenated copy (the same result to float rounding); other forms concatenate first.

  Returns:
    (N, H', W', O).
  """
  _check_impl(impl)
  if packed is not None:
    _require_packed_native(_runs_native(_joined_shape(x, x2), kernel, strides, padding, impl))
    if _packed_winograd_tile(x, x2, kernel, strides, padding):
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
  """3x3, stride-1, padding-1 convolution, NHWC x HWIO -> NHWC, in the form `impl`.

  Args:
    x: (N, H, W, C) input.
    kernel: (3, 3, C, O) kernel, same dtype as `x`.
    impl: one of `CONV_IMPLS`; 'auto' picks by shape (`auto_impl`).
    bias: optional (O,).
    relu_slope, residual: see `conv`.

  Returns:
    (N, H, W, O), the same values whatever `impl` (up to float rounding).
  """
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
  elif impl == 'winograd':  # The native kernels' backward where 'auto' would use them.
    y = winograd_conv(x, kernel, _auto_native(x, kernel), bias)
  else:
    y = _add_bias(conv_xla(x, kernel), bias)
  return _epilogue(y, relu_slope, residual)


# XLA:CPU compiles convolutions to YNNPACK by default. XLA's own (Eigen) kernels run the HINet
# forward faster but its kernel gradients slower (bench/README.md): so this is for executables
# that only run the model forward. Dots stay on YNNPACK.
_EIGEN_CONVOLUTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


def inference_compiler_options() -> dict | None:
  """`jax.jit(..., compiler_options=...)` for forward-only executables: faster convs on CPU.

  Returns:
    The options on the CPU backend, else None (GPU/TPU need none).
  """
  return dict(_EIGEN_CONVOLUTIONS) if _on_cpu() else None
