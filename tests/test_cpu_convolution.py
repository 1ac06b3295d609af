"""Every convolution form equals lax.conv (values and both gradients); 'auto' picks as measured."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hinet_jax.cpu import convolution
from hinet_jax.cpu import kernels as cpu_kernels
from hinet_jax.cpu import layers as cpu_layers
from hinet_jax import models
from hinet_jax.train import sharding
from hinet_jax.cpu import winograd

import launch


def _rel(a, b):
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def _value_and_grads(fn, x, k, ct):
  loss = lambda x, k: jnp.sum(fn(x, k) * ct)
  return jax.jit(lambda x, k: (fn(x, k), jax.grad(loss, (0, 1))(x, k)))(x, k)


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _assert_same_sums(got, want, terms):
  """`got` and `want` are the same float32 sums of `terms` products each, summed in other orders.

  The order is the compiler's and the CPU's choice (vector width, register blocks, threads), so
  only the rounding is shared, never the bits. Each addition rounds by at most half an ulp of its
  partial sum; with random signs these errors grow as sqrt(terms), and partial sums of zero-mean
  products stay within the outputs' largest magnitude. Two orders thus differ by about
  eps * sqrt(terms) * max|want|: the bound is 4x that. A wrong or missing product is off by about
  max|want| / sqrt(terms), hundreds of times more at these sizes (terms <= 2304).
  """
  if want is None:
    assert got is None
    return
  want = np.asarray(want)
  scale = np.finfo(np.float32).eps * np.sqrt(terms) * float(np.max(np.abs(want)))
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=4 * scale)


def _assert_is_form(got, form, other):
  """`got` is `form`'s result, not `other`'s: two forms of one function whose roundings differ
  (e.g. Winograd and the direct convolution), told apart by which one `got` is nearer."""
  assert _rel(got, form) < _rel(other, form) / 4


# (N, H, W, C, O): C < O, C > O (the two matmul branches), odd sizes, a 1-pixel-wide image.
SHAPES = [(2, 5, 7, 3, 6), (1, 6, 4, 9, 3), (2, 4, 4, 5, 5), (1, 1, 3, 2, 4)]


@pytest.mark.parametrize('impl', ['matmul', 'winograd', 'native', 'auto'])
@pytest.mark.parametrize('shape', SHAPES)
def test_conv3x3_forms_match_lax_conv(impl, shape):
  n, h, w, c, o = shape
  x, k, ct = _random((n, h, w, c), 0), _random((3, 3, c, o), 1), _random((n, h, w, o), 2)
  y, grads = _value_and_grads(lambda x, k: convolution.conv3x3(x, k, impl), x, k, ct)
  y_ref, grads_ref = _value_and_grads(convolution.conv_xla, x, k, ct)
  assert y.shape == y_ref.shape
  for a, b in zip((y, *grads), (y_ref, *grads_ref)):
    assert _rel(a, b) < 1e-5


def test_pointwise_conv_matches_lax_conv():
  x, k, ct = _random((2, 5, 3, 6), 0), _random((1, 1, 6, 4), 1), _random((2, 5, 3, 4), 2)
  y, grads = _value_and_grads(
      lambda x, k: convolution.conv(x, k, 1, 0, impl='auto'), x, k, ct)
  y_ref, grads_ref = _value_and_grads(lambda x, k: convolution.conv_xla(x, k, 1, 0), x, k, ct)
  for a, b in zip((y, *grads), (y_ref, *grads_ref)):
    assert _rel(a, b) < 1e-5


# (x shape, kernel size, stride, padding, O): HINet's 3x3, 1x1 and 4x4/stride-2 convs, odd sizes,
# the vector tail (O or C not a multiple of 16, C not of the register block), images smaller
# than the kernel, more pixels than one band or chunk of rows, no padding, a stride larger than
# the kernel (pixels no tap reaches), the deep levels' few pixels and many channels, and
# channels a multiple of 256 (band pixels padded to another stride; bands shared by items that
# split the outputs, and not).
NATIVE_CASES = [((2, 9, 11, 13), 3, 1, 1, 40), ((1, 10, 8, 16), 4, 2, 1, 32),
                ((2, 7, 5, 3), 4, 2, 1, 16), ((1, 2, 2, 8), 4, 2, 1, 8), ((1, 2, 3, 4), 3, 1, 1, 5),
                ((2, 40, 36, 24), 3, 1, 1, 48), ((1, 6, 6, 8), 3, 1, 0, 16),
                ((2, 9, 7, 20), 1, 1, 0, 33), ((1, 7, 9, 16), 1, 3, 0, 16),
                ((2, 4, 4, 272), 3, 1, 1, 64), ((2, 5, 6, 256), 3, 1, 1, 48),
                ((1, 5, 6, 256), 3, 1, 1, 16), ((1, 6, 6, 512), 4, 2, 1, 64),
                # padding past the kernel: windows with one tap inside the image, or none
                ((1, 1, 2, 5), 2, 1, 2, 7), ((1, 3, 4, 6), 3, 2, 2, 9),
                # fewer outputs than a vector from a vector's inputs and more (the network's last
                # convolutions: the kernel gradient with its roles swapped), one chunk and many
                ((1, 5, 7, 24), 3, 1, 1, 5), ((2, 20, 16, 32), 3, 1, 1, 3)]


@pytest.mark.parametrize('case', NATIVE_CASES)
def test_cpu_kernels_match_lax_conv(case):
  xshape, k, s, p, o = case
  x, kernel = _random(xshape, 0), _random((k, k, xshape[-1], o), 1)
  ct = _random(convolution.conv_xla(x, kernel, s, p).shape, 2)
  y, grads = _value_and_grads(lambda x, w: convolution.native_conv(x, w, s, p), x, kernel, ct)
  y_ref, grads_ref = _value_and_grads(lambda x, w: convolution.conv_xla(x, w, s, p), x, kernel, ct)
  assert y.shape == y_ref.shape
  for a, b in zip((y, *grads), (y_ref, *grads_ref)):
    assert _rel(a, b) < 1e-5
  # The kernels by themselves, with the kernel stored either way round.
  hwoi = kernel.transpose(0, 1, 3, 2)
  for w, layout in ((kernel, 'HWIO'), (hwoi, 'HWOI')):
    assert _rel(cpu_kernels.conv_forward(x, w, s, p, layout), y_ref) < 1e-5
    assert _rel(cpu_kernels.conv_input_grad(ct, w, x.shape, s, p, layout), grads_ref[0]) < 1e-5
    dx, dw = cpu_kernels.conv_grads(x, ct, w, s, p, layout)
    assert _rel(dx, grads_ref[0]) < 1e-5 and dw.shape == w.shape
    assert _rel(dw if layout == 'HWIO' else dw.transpose(0, 1, 3, 2), grads_ref[1]) < 1e-5
  # Without the input gradient: the same kernel gradient, no input gradient.
  none, dw = cpu_kernels.conv_grads(x, ct, kernel, s, p, input_grad=False)
  assert none is None and _rel(dw, grads_ref[1]) < 1e-5


# (N, H, W, C, O) of the decoder's 2x2/stride-2 transposed convolution: a large image (the
# chunked kernel gradient), a small one (split by channel), odd sizes and channel tails.
UPCONV_SHAPES = [(2, 20, 18, 64, 32), (2, 8, 8, 64, 48), (1, 5, 7, 13, 40), (1, 3, 3, 3, 5)]


@pytest.mark.parametrize('shape', UPCONV_SHAPES)
def test_native_upconv_matches_matmul_form(shape):
  n, h, w, c, o = shape
  x, k, ct = _random((n, h, w, c), 0), _random((2, 2, c, o), 1), _random((n, 2 * h, 2 * w, o), 2)
  y, grads = _value_and_grads(lambda x, k: convolution.upconv2x2(x, k, 'native'), x, k, ct)
  y_ref, grads_ref = _value_and_grads(convolution.matmul_upconv2x2, x, k, ct)
  for a, b in zip((y, *grads), (y_ref, *grads_ref)):
    assert a.shape == b.shape and _rel(a, b) < 1e-5


@pytest.mark.parametrize('layer', ['conv3x3', 'conv4x4s2', 'conv1x1', 'upconv'])
def test_native_bias_is_added_in_the_kernel(layer):
  """The bias goes into the kernels' output (no pass of its own); values and all three
  gradients equal adding it after XLA's convolution. O = 20: a vector tail too."""
  x, b, = _random((2, 6, 10, 12), 0), _random((20,), 1)
  if layer == 'upconv':
    k = _random((2, 2, 12, 20), 2)
    native = lambda x, k, b: convolution.upconv2x2(x, k, 'native', b)
    ref = lambda x, k, b: convolution.matmul_upconv2x2(x, k) + b
  else:
    size, stride, pad = {'conv3x3': (3, 1, 1), 'conv4x4s2': (4, 2, 1), 'conv1x1': (1, 1, 0)}[layer]
    k = _random((size, size, 12, 20), 2)
    native = lambda x, k, b: convolution.conv(x, k, stride, pad, 'native', b)
    ref = lambda x, k, b: convolution.conv_xla(x, k, stride, pad) + b
  ct = _random(ref(x, k, b).shape, 3)
  run = lambda f: jax.jit(lambda x, k, b: (f(x, k, b), jax.grad(
      lambda *a: jnp.sum(f(*a) * ct), (0, 1, 2))(x, k, b)))(x, k, b)
  (y, grads), (y_ref, grads_ref) = run(native), run(ref)
  for a, r in zip((y, *grads), (y_ref, *grads_ref)):
    assert a.shape == r.shape and _rel(a, r) < 1e-5


@pytest.mark.parametrize('layer', ['conv3x3', 'conv4x4s2', 'conv1x1'])
@pytest.mark.parametrize('relu, residual', [(True, True), (True, False), (False, True)])
def test_native_epilogue_equals_leaky_relu_and_add_after_the_conv(layer, relu, residual):
  """LeakyReLU and the residual add inside the kernels' store: the same values as XLA applying
  them to the conv's output (up to XLA contracting slope * z + r into one rounding), and
  (differentiated, unfused) the same gradients to float rounding. O = 40: a full 32-channel
  block and a 16-wide vector tail; O = 3 is all tail. (That XLA has no pass of its own left is
  speed: bench/model_speed.py.)"""
  size, stride, pad = {'conv3x3': (3, 1, 1), 'conv4x4s2': (4, 2, 1), 'conv1x1': (1, 1, 0)}[layer]
  for o in (40, 3):
    x, b, k = _random((2, 6, 10, 12), 0), _random((o,), 1), _random((size, size, 12, o), 2)
    out_shape = convolution.conv_xla(x, k, stride, pad).shape
    r = _random(out_shape, 4) if residual else None
    slope = 0.2 if relu else None
    fused = lambda x, k, b, r: convolution.conv(x, k, stride, pad, 'native', b, slope, r)
    def unfused(x, k, b, r):
      y = convolution.conv(x, k, stride, pad, 'native', b)
      y = jax.nn.leaky_relu(y, slope) if relu else y
      return y if r is None else y + r
    np.testing.assert_allclose(jax.jit(fused)(x, k, b, r), jax.jit(unfused)(x, k, b, r),
                               rtol=1e-6, atol=1e-6)
    ct = _random(out_shape, 3)
    grads = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * ct), (0, 1, 2, 3)))(x, k, b, r)
    # Sums per gradient: dx over the taps and outputs, dk and the bias over the output pixels.
    pixels = int(np.prod(out_shape[:3]))
    for a, e, terms in zip(grads(fused), grads(unfused), (size * size * o, pixels, pixels, 1)):
      _assert_same_sums(a, e, terms)
  with pytest.raises(ValueError, match=r'residual must be shaped as the output'):
    cpu_kernels.conv_forward(x, k, stride, pad, residual=jnp.zeros((1, 2, 3, 4)))


@pytest.mark.parametrize('case', NATIVE_CASES[:4] + NATIVE_CASES[7:8])
def test_prepacked_kernels_give_the_same_products(case):
  """A kernel packed once (`pack_kernel`) and read by the products equals packing it in the
  call, for the convolution and its input gradient, either stored layout, with vector tails: to
  float rounding (another executable may sum in another order)."""
  xshape, k, s, p, o = case
  x, kernel = _random(xshape, 0), _random((k, k, xshape[-1], o), 1)
  g = _random(convolution.conv_xla(x, kernel, s, p).shape, 2)
  for w, layout in ((kernel, 'HWIO'), (kernel.transpose(0, 1, 3, 2), 'HWOI')):
    fwd = jax.jit(lambda x, w, packed: cpu_kernels.conv_forward(x, w, s, p, layout, packed=packed))
    back = jax.jit(lambda g, w, packed: cpu_kernels.conv_input_grad(g, w, x.shape, s, p, layout,
                                                                    packed=packed))
    _assert_same_sums(fwd(x, w, cpu_kernels.pack_kernel(w, layout)), fwd(x, w, None),
                      k * k * xshape[-1])
    _assert_same_sums(back(g, w, cpu_kernels.pack_kernel(w, layout, transposed=True)),
                      back(g, w, None), k * k * o)


def test_prepacked_kernels_wrong_or_differentiated_are_clear_errors():
  x, k = _random((1, 6, 6, 8), 0), _random((3, 3, 8, 24), 1)
  packed = cpu_kernels.pack_kernel(k)
  with pytest.raises(ValueError, match='does not fit this convolution'):
    cpu_kernels.conv_forward(x, k, 1, 1, packed=packed[:100])
  with pytest.raises(ValueError, match='does not fit this convolution'):  # the other direction's
    cpu_kernels.conv_input_grad(_random((1, 6, 6, 24), 2), k, x.shape, 1, 1,
                                packed=cpu_kernels.pack_kernel(k[..., :8]))
  with pytest.raises(ValueError, match='does not run on the CPU kernels'):
    convolution.conv(x, k, 1, 1, 'xla', packed=packed)
  with pytest.raises(ValueError, match='cannot be differentiated'):
    jax.grad(lambda k: jnp.sum(convolution.conv(x, k, 1, 1, 'native', packed=packed)))(k)
  assert convolution.pack_for_conv(x, k, 1, 1, 'xla') is None


# (N, H, W, C1, C2, k, stride, padding, O) of a convolution of two inputs joined along the
# channels: the decoder's equal halves read in place (3x3, and its 1x1 shortcut), halves whose
# sum is a multiple of 256 (joined in the band copy), unequal parts, a 4x4/stride-2 conv.
JOIN_CASES = [(2, 9, 11, 8, 8, 3, 1, 1, 40), (1, 7, 6, 24, 24, 1, 1, 0, 20),
              (2, 4, 4, 128, 128, 3, 1, 1, 48), (1, 7, 6, 5, 11, 3, 1, 1, 17),
              (1, 10, 8, 16, 16, 4, 2, 1, 32)]


@pytest.mark.parametrize('case', JOIN_CASES)
def test_joined_inputs_give_the_concatenations_products(case):
  """`conv(x, k, x2=x2)` reads both arrays in place: the convolution of their concatenation
  (with bias, LeakyReLU and residual, packed or not), and the same gradients, to float rounding:
  reading two arrays, the kernels may sum the channels in another order than reading one."""
  n, h, w, c1, c2, k, s, p, o = case
  taps = k * k * (c1 + c2)
  x, x2 = _random((n, h, w, c1), 0), _random((n, h, w, c2), 1)
  kernel, bias = _random((k, k, c1 + c2, o), 2), _random((o,), 3)
  joined = jnp.concatenate([x, x2], axis=-1)
  residual = _random(convolution.conv_xla(joined, kernel, s, p).shape, 4)
  fwd = jax.jit(lambda x, x2, packed: convolution.conv(
      x, kernel, s, p, 'native', bias, 0.2, residual, packed, x2))
  want = fwd(joined, None, None)
  _assert_same_sums(fwd(x, x2, None), want, taps)
  packed = convolution.pack_for_conv(x, kernel, s, p, 'native', x2)
  if convolution._packed_winograd_tile(x, x2, kernel, s, p):  # pylint: disable=protected-access
    assert _rel(fwd(x, x2, packed), want) < 1e-5  # Winograd's rounding (its own test above)
  else:
    _assert_same_sums(fwd(x, x2, packed), want, taps)
  assert _rel(want, convolution._epilogue(  # pylint: disable=protected-access
      convolution.conv_xla(joined, kernel, s, p) + bias, 0.2, residual)) < 1e-5
  loss = lambda x, x2, kernel: jnp.sum(convolution.conv(x, kernel, s, p, 'native', bias, 0.2,
                                                        x2=x2) ** 2)
  dx, dx2, dk = jax.jit(jax.grad(loss, (0, 1, 2)))(x, x2, kernel)
  dj, _, dk_ref = jax.jit(jax.grad(loss, (0, 1, 2)))(joined, None, kernel)
  pixels = int(np.prod(want.shape[:3]))
  _assert_same_sums(jnp.concatenate([dx, dx2], axis=-1), dj, k * k * o)
  _assert_same_sums(dk, dk_ref, pixels)
  # Where the CPU kernels do not run the convolution, the join is a concatenation.
  np.testing.assert_allclose(convolution.conv(x, kernel, s, p, 'xla', x2=x2),
                             convolution.conv_xla(joined, kernel, s, p), rtol=1e-6, atol=1e-5)


# (N, H, W, C1, C2, O) of Winograd convolutions: odd sizes (partial tiles at the bottom and
# right), a 1-pixel row, images smaller than a tile, more tiles than one work item, a batch, O a
# vector but not a register block, a join of equal and of unequal parts.
WINOGRAD_CASES = [(1, 7, 9, 32, 0, 32), (2, 10, 6, 48, 0, 80), (1, 1, 5, 32, 0, 64),
                  (1, 2, 1, 64, 0, 32), (1, 41, 37, 32, 0, 48), (1, 9, 9, 32, 32, 32),
                  (2, 5, 11, 16, 48, 32)]


@pytest.mark.parametrize('tile', cpu_kernels.WINOGRAD_TILES)
@pytest.mark.parametrize('case', WINOGRAD_CASES)
def test_winograd_matches_the_convolution(case, tile):
  """The CPU kernels' Winograd convolutions F(2x2, 3x3) and F(4x4, 3x3) (prepacked inference)
  compute the 3x3 convolution, with bias, LeakyReLU, residual and joined inputs, to float32
  rounding; `conv` with a kernel that `pack_for_conv` packed takes one where it applies."""
  n, h, w, c1, c2, o = case
  x, x2 = _random((n, h, w, c1), 0), _random((n, h, w, c2), 1) if c2 else None
  kernel, bias = _random((3, 3, c1 + c2, o), 2), _random((o,), 3)
  residual = _random((n, h, w, o), 4)
  joined = x if x2 is None else jnp.concatenate([x, x2], axis=-1)
  want = convolution._epilogue(  # pylint: disable=protected-access
      convolution.conv_xla(joined, kernel, 1, 1) + bias, 0.2, residual)
  packed = cpu_kernels.pack_winograd(kernel, tile)
  got = cpu_kernels.winograd_conv(x, packed, o, bias, 0.2, residual, x2)
  assert _rel(got, want) < 2e-6 * tile
  plain = cpu_kernels.winograd_conv(x, packed, o, x2=x2)
  assert _rel(plain, convolution.conv_xla(joined, kernel, 1, 1)) < 2e-6 * tile
  assert convolution._packed_winograd_tile(  # pylint: disable=protected-access
      x, x2, kernel, 1, 1) == (4 if min(c1 + c2, o) >= 32 else 0)
  model_path = jax.jit(lambda x, x2: convolution.conv(
      x, kernel, 1, 1, 'native', bias, 0.2, residual,
      convolution.pack_for_conv(x, kernel, 1, 1, 'native', x2), x2))
  assert _rel(model_path(x, x2), want) < 8e-6


@pytest.mark.parametrize('tile', cpu_kernels.WINOGRAD_TILES)
def test_winograd_packing_in_cpp_is_the_transform_of_winograd_py(tile):
  """`pack_winograd` (C++) packs G g G^T as `winograd.kernel_transform` computes it, outputs not a
  whole register block (zero-padded lanes where vectors are 16 floats) included."""
  kernel = _random((3, 3, 24, 40), 0)
  got = cpu_kernels.pack_winograd(kernel, tile)
  want = cpu_kernels.pack_kernel(winograd.kernel_transform(kernel, tile))
  assert got.shape == want.shape
  # The buffers fit 16-float vectors; kernels built for 8-float ones (AVX2) pack O rounded up to
  # 8 and never write or read the rest, so only that much is compared.
  used = (tile + 2)**2 * 24 * 40
  # Each transformed tap sums the 9 taps in C++'s order, not XLA's; F(4x4)'s divisions by 6,
  # 12, 24 also round once differently from XLA's (reciprocal products).
  _assert_same_sums(got[:used], want[:used], 9)


@pytest.mark.parametrize('case', [(1, 7, 9, 32, 32), (2, 10, 6, 48, 80), (1, 1, 5, 32, 64),
                                  (1, 41, 37, 32, 48)])
@pytest.mark.parametrize('tile', cpu_kernels.WINOGRAD_TILES)
def test_winograd_gradients_match_the_direct_ones(case, tile):
  """`winograd_conv_grads` are the 3x3 conv's input and kernel gradients: partial tiles at the
  edges, an image smaller than a tile, a batch, more tiles than one chunk of the kernel
  gradient (summed per thread), outputs not a register block."""
  n, h, w, c, o = case
  x, kernel, ct = _random((n, h, w, c), 0), _random((3, 3, c, o), 1), _random((n, h, w, o), 2)
  want = jax.vjp(lambda x, k: convolution.conv_xla(x, k, 1, 1), x, kernel)[1](ct)
  dx, dkernel = cpu_kernels.winograd_conv_grads(x, ct, kernel, tile)
  assert _rel(dx, want[0]) < 2e-6 * tile and _rel(dkernel, want[1]) < 2e-6 * tile
  none, dkernel = cpu_kernels.winograd_conv_grads(x, ct, kernel, tile, input_grad=False)
  assert none is None and _rel(dkernel, want[1]) < 2e-6 * tile
  with pytest.raises(ValueError, match='multiples of 16'):
    cpu_kernels.winograd_conv_grads(x[..., :24], ct, kernel[:, :, :24], tile)


@pytest.mark.parametrize('tile', cpu_kernels.WINOGRAD_TILES)
def test_training_convs_by_winograd_match_the_convolution_and_its_gradients(tile, monkeypatch):
  """`native_conv` runs the 3x3 conv and both its gradients by Winograd F(4x4) from 32x32 pixels,
  F(2x2) on 16x16 ones with many channels (the kernel transformed in the call): all three equal
  to XLA's to float rounding, also where only the kernel is differentiated, and each is the
  Winograd tile's own result, told from the direct convolution's by its rounding."""
  x, k = _random((2, 33, 32, 32), 0), _random((3, 3, 32, 48), 1) / 17
  bias, ct = _random((48,), 2), _random((2, 33, 32, 48), 3)
  policy = convolution._native_winograd_tile  # pylint: disable=protected-access
  assert policy(x.shape, k.shape, 1, 1) == 4
  # F(4x4) from 32x32 pixels up to 1024 -> 512 channels; F(2x2) from 16x16 pixels and
  # 128 -> 256 channels; else direct.
  for hw, c, o, want in ((32, 1024, 512, 4), (32, 1024, 1024, 0), (16, 128, 256, 2),
                         (16, 128, 128, 0), (31, 32, 48, 0), (8, 512, 512, 0)):
    assert policy((2, hw, hw, c), (3, 3, c, o), 1, 1) == want
  if tile == 2:  # These few channels by F(2x2), as on 16x16 pixels with more.
    monkeypatch.setattr(convolution, 'NATIVE_WINOGRAD_MIN_PIXELS', 10**9)
    monkeypatch.setattr(convolution, 'NATIVE_WINOGRAD_F2_MIN_KERNEL', 0)
  assert policy(x.shape, k.shape, 1, 1) == tile
  y, grads = _value_and_grads(lambda x, k: convolution.conv(x, k, 1, 1, 'native', bias), x, k, ct)
  y_ref, grads_ref = _value_and_grads(lambda x, k: convolution.conv_xla(x, k, 1, 1) + bias, x, k,
                                      ct)
  for a, b in zip((y, *grads), (y_ref, *grads_ref)):
    assert _rel(a, b) < 1e-5
  grad_k = jax.jit(jax.grad(lambda k: jnp.sum(convolution.conv(x, k, 1, 1, 'native') * ct)))
  assert _rel(grad_k(k), grads_ref[1]) < 1e-5
  winograd_y = cpu_kernels.winograd_conv(x, cpu_kernels.pack_winograd(k, tile), 48, bias)
  winograd_dx, winograd_dk = cpu_kernels.winograd_conv_grads(x, ct, k, tile)
  direct_dx, direct_dk = cpu_kernels.conv_grads(x, ct, k, 1, 1)
  _assert_is_form(y, winograd_y, cpu_kernels.conv_forward(x, k, 1, 1, bias=bias))
  _assert_is_form(grads[0], winograd_dx, direct_dx)
  for dk in (grads[1], grad_k(k)):
    _assert_is_form(dk, winograd_dk, direct_dk)


def test_winograd_where_it_does_not_apply_and_bad_input():
  x, kernel = _random((1, 6, 6, 32), 0), _random((3, 3, 32, 32), 1)
  assert cpu_kernels.winograd_applies(x.shape, kernel.shape, 1, 1)
  # O not a multiple of 16, 1x1, stride 2, C not a multiple of 16.
  for shape, k, s, p in [((1, 6, 6, 32), (3, 3, 32, 24), 1, 1),
                         ((1, 6, 6, 32), (1, 1, 32, 32), 1, 0),
                         ((1, 6, 6, 32), (3, 3, 32, 32), 2, 1),
                         ((1, 6, 6, 24), (3, 3, 24, 32), 1, 1)]:
    assert not cpu_kernels.winograd_applies(shape, k, s, p)
  # The tile by channels: F(4x4) up to 512 -> 512, F(2x2) up to 1024 -> 1024, then direct (0),
  # as for fewer than 32.
  for c, o, tile in ((32, 32, 4), (512, 256, 4), (512, 512, 4), (1024, 512, 2), (1024, 1024, 2),
                     (2048, 1024, 0), (16, 32, 0)):
    assert convolution._packed_winograd_tile(  # pylint: disable=protected-access
        jax.ShapeDtypeStruct((1, 4, 4, c), jnp.float32), None,
        jax.ShapeDtypeStruct((3, 3, c, o), jnp.float32), 1, 1) == tile
  packed = cpu_kernels.pack_winograd(kernel)
  with pytest.raises(ValueError, match='is not the transformed kernel'):
    cpu_kernels.winograd_conv(x, cpu_kernels.pack_kernel(kernel), 32)  # the direct packing
  with pytest.raises(ValueError, match='tile must be one of'):
    cpu_kernels.pack_winograd(kernel, 3)
  with pytest.raises(ValueError, match='multiples of'):
    cpu_kernels.winograd_conv(x[..., :24], packed, 32)
  with pytest.raises(ValueError, match='residual must be shaped'):
    cpu_kernels.winograd_conv(x, packed, 32, residual=x[..., :16])
  with pytest.raises(ValueError, match='cannot be differentiated'):
    jax.grad(lambda x: jnp.sum(convolution.conv(x, kernel, 1, 1, 'native', packed=packed)))(x)


def test_joined_inputs_that_do_not_fit_are_clear_errors():
  x, kernel = _random((1, 6, 6, 8), 0), _random((3, 3, 16, 4), 1)
  with pytest.raises(ValueError, match=r"must have the kernel's 16 channels"):
    cpu_kernels.conv_forward(x, kernel, 1, 1, x2=_random((1, 6, 6, 4), 2))
  with pytest.raises(ValueError, match=r'one N, H, W'):
    cpu_kernels.conv_forward(x, kernel, 1, 1, x2=_random((1, 6, 5, 8), 2))


def test_gradient_skips_the_input_gradient_of_an_undifferentiated_input():
  """The image entering the network needs no gradient: the backward computes the kernel
  gradient only, and allocates no input gradient. Seen in the executable's memory, with C >> O
  so that the input gradient would be its largest array (the kernel gradient taken from the call
  that computes both needs 8x these temporaries). The time it saves is bench/train_step.py's."""
  x, k = _random((1, 32, 32, 128), 0), _random((3, 3, 128, 8), 1)
  native = lambda x, k: jnp.sum(convolution.conv(x, k, 1, 1, 'native') ** 2)
  ref = lambda x, k: jnp.sum(convolution.conv_xla(x, k, 1, 1) ** 2)
  grad_k = jax.jit(lambda k: jax.grad(native, 1)(x, k))
  assert grad_k.lower(k).compile().memory_analysis().temp_size_in_bytes < x.nbytes
  assert _rel(grad_k(k), jax.grad(ref, 1)(x, k)) < 1e-5
  assert _rel(jax.jit(jax.grad(native))(x, k), jax.grad(ref)(x, k)) < 1e-5


def test_cpu_kernel_gradient_is_reproducible():
  """Threads split the kernel gradient's sum: the result must not depend on which ran what."""
  x, ct, k = _random((2, 48, 40, 32), 0), _random((2, 48, 40, 32), 1), _random((3, 3, 32, 32), 2)
  grad = jax.jit(lambda x, ct: cpu_kernels.conv_grads(x, ct, k, 1, 1)[1])
  first = np.asarray(grad(x, ct))
  for _ in range(8):
    np.testing.assert_array_equal(np.asarray(grad(x, ct)), first)


def test_cpu_kernels_under_vmap():
  """Per-example gradients (vmap over the batch) equal the per-example loop."""
  x, kernel, ct = _random((3, 6, 5, 4), 0), _random((3, 3, 4, 16), 1), _random((3, 6, 5, 16), 2)
  grads = lambda x, ct: cpu_kernels.conv_grads(x[None], ct[None], kernel, 1, 1)
  batched_dx, batched_dw = jax.vmap(grads)(x, ct)
  for i in range(3):
    ref_dx, ref_dw = jax.vjp(lambda x, w: convolution.conv_xla(x, w), x[i:i + 1], kernel)[1](
        ct[i:i + 1])
    assert _rel(batched_dx[i], ref_dx) < 1e-5 and _rel(batched_dw[i], ref_dw) < 1e-5


def test_auto_impl_policy():
  auto = lambda shape, o, native=False: convolution.auto_impl(shape, o, backend='cpu',
                                                              native=native)
  # Deep levels (few pixels, many channels): matmuls.
  assert auto((2, 8, 8, 512), 512) == 'matmul'
  assert auto((1, 16, 16, 1024), 1024) == 'matmul'
  # Convs to an image (3 channels) from many: matmul + shifted adds.
  assert auto((2, 128, 128, 32), 3) == 'matmul'
  # ...but not from an image: YNNPACK is fine there.
  assert auto((2, 128, 128, 3), 32) == 'xla'
  # Middle levels: Winograd forward.
  assert auto((1, 64, 64, 256), 256) == 'winograd'
  assert auto((1, 32, 32, 128), 256) == 'winograd'
  # Large images with few channels: lax.conv.
  assert auto((1, 256, 256, 32), 32) == 'xla'
  assert auto((1, 128, 128, 128), 128) == 'xla'
  # With the CPU kernels: every shape but the convs to an image.
  assert auto((2, 128, 128, 32), 3, native=True) == 'matmul'
  for shape, o in [((2, 8, 8, 512), 512), ((1, 64, 64, 256), 256), ((1, 32, 32, 128), 256),
                   ((1, 256, 256, 32), 32), ((2, 128, 128, 3), 32), ((1, 160, 90, 512), 512)]:
    assert auto(shape, o, native=True) == 'native'
  # Symbolic shapes (shape-polymorphic export) and other backends: lax.conv.
  shape = jax.export.symbolic_shape('b, 16*h, 16*w, 64')
  assert convolution.auto_impl(shape, 64, backend='cpu', native=True) == 'xla'
  assert convolution.auto_impl((2, 8, 8, 512), 512, backend='gpu') == 'xla'
  assert convolution.auto_impl((2, 8, 8, 512), 512, backend='tpu') == 'xla'


_AUTO_BACKEND = """
    import jax
    from hinet_jax import backends
    print(jax.device_count(), 'devices:', backends.resolve('auto').name)
"""


def test_auto_is_the_cpu_backend_on_one_device_only():
  one = _run_python(_AUTO_BACKEND, XLA_FLAGS=launch.xla_flags(1))
  assert one.stdout.strip() == '1 devices: cpu', one.stderr
  eight = _run_python(_AUTO_BACKEND)  # conftest's XLA_FLAGS: 8 devices
  assert eight.stdout.strip() == '8 devices: xla', eight.stderr


def test_native_is_a_clear_error_where_it_cannot_run():
  x, k = _random((1, 16, 16, 16), 0), _random((3, 3, 16, 32), 1)
  with pytest.raises(ValueError, match="impl='native' needs the CPU backend, float32"):
    convolution.conv(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), 1, 1, 'native')


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
                        text=True, timeout=300, env={**os.environ, **env},
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_FALLBACK_CHECK = """
    import jax, jax.numpy as jnp, numpy as np
    from hinet_jax.cpu import convolution
    from hinet_jax.cpu import kernels as cpu_kernels
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 8, 8, 16)), jnp.float32)
    k = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 16, 16)), jnp.float32)
    grad = lambda impl: jax.grad(lambda k: jnp.sum(convolution.conv(x, k, 1, 1, impl) ** 2))(k)
    print('available', cpu_kernels.available())
    print('auto==xla', bool(jnp.allclose(grad('auto'), grad('xla'), rtol=1e-5, atol=1e-4)))
    try:
      grad('native')
    except ValueError as e:
      print('native error:', e)
    from hinet_jax import backends
    print('auto backend', backends.resolve('auto').name)
"""


def test_without_a_compiler_auto_falls_back_to_xla_with_a_warning(tmp_path):
  result = _run_python(_FALLBACK_CHECK, CXX='/bin/false', PATH='/nonexistent',
                       HINET_JAX_CACHE_DIR=str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert 'available False' in result.stdout and 'auto==xla True' in result.stdout
  assert "native error: impl='native' needs" in result.stdout
  assert 'auto backend xla' in result.stdout
  assert 'conv_kernels.cc failed' in result.stderr  # the warning names the source that failed
  assert not list(tmp_path.glob('*.so'))  # no half-built library left in the cache


_HAS_AVX512 = os.path.exists('/proc/cpuinfo') and 'avx512f' in open('/proc/cpuinfo').read()


@pytest.mark.skipif(not _HAS_AVX512, reason='without AVX-512 the default build is the AVX2 one: '
                    'every test of the cpu backend runs it, after its self-test passed')
def test_avx2_kernels_pass_their_self_test(tmp_path):
  """Built without AVX-512 (`HINET_JAX_CPU_KERNEL_FLAGS`), as CPUs without it run them (8-float
  vectors, smaller register blocks), the kernels pass their self-test against XLA."""
  env = dict(HINET_JAX_CACHE_DIR=str(tmp_path), HINET_JAX_CPU_KERNEL_FLAGS='-mno-avx512f -O1')
  result = _run_python("from hinet_jax.cpu import kernels; print(kernels.available())", **env)
  assert result.stdout.strip() == 'True', result.stderr
  (verdict,) = tmp_path.glob('*.selftest-*')
  assert verdict.read_text().startswith('passed\nlargest relative error')


def test_kernels_are_built_and_tested_once_and_refused_if_wrong(tmp_path):
  """The kernels are built once per source, flags and CPU into the cache and tested there once
  against XLA (`cpu.selftest`, the verdict kept beside them). A build whose convolution is wrong
  (a test-only define adds 1 to one output) is refused on the machine that built it: one warning
  naming the product, and 'auto' runs XLA's layers; the next process reads the verdict back."""
  env = dict(HINET_JAX_CACHE_DIR=str(tmp_path), XLA_FLAGS=launch.xla_flags(1),
             HINET_JAX_CPU_KERNEL_FLAGS='-DHINET_JAX_WRONG_FOR_TESTS -O0')  # -O0: the fastest build
  check = """
      from hinet_jax import backends
      from hinet_jax.cpu import kernels
      print(kernels.available(), backends.resolve('auto').name)
      try:
        backends.resolve('cpu')
      except ValueError as e:
        print(e)
  """
  stamps = None
  for _ in range(2):  # built and tested, then the verdict read back
    result = _run_python(check, **env)
    lines = result.stdout.strip().splitlines()
    assert lines[0] == 'False xla' and 'self-test' in lines[1], result.stdout + result.stderr
    warnings = [l for l in result.stderr.splitlines() if 'disagree with XLA' in l]
    assert len(warnings) == 1 and 'forward' in warnings[0], result.stderr
    (library,), (verdict,) = tmp_path.glob('conv_kernels-*.so'), tmp_path.glob('*.selftest-*')
    now = [f.stat().st_mtime_ns for f in (library, verdict)]
    assert stamps in (None, now)  # neither rebuilt nor retested
    stamps = now
  assert verdict.read_text().startswith('failed')
  assert len(list(tmp_path.iterdir())) == 2


def test_unknown_impl_is_a_clear_error():
  x, k = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))
  with pytest.raises(ValueError, match="impl must be one of.*'fft'"):
    convolution.conv(x, k, 1, 1, impl='fft')


_SMALL_HINET = models.HINet(wf=4, depth=2)


def _outputs_and_grads(model, params, x):
  loss = lambda p: sum(jnp.sum(o**2) for o in model.apply({'params': p}, x))
  return jax.jit(lambda p: (model.apply({'params': p}, x), jax.grad(loss)(p)))(params)


@functools.lru_cache(maxsize=None)
def _small_hinet_reference():
  """(params, x, XLA's outputs and parameter gradients), computed once for every form."""
  x = jnp.asarray(np.random.default_rng(2).random((2, 10, 9, 3)), jnp.float32)
  params = models.init_params(_SMALL_HINET, 0)
  return params, x, _outputs_and_grads(_SMALL_HINET, params, x)


@pytest.mark.parametrize('impl', ['matmul', 'winograd', 'native', 'auto'])
def test_hinet_forms_match_xla(impl):
  """Both stages and the parameter gradient of a whole (small) HINet."""
  params, x, (outs_ref, grads_ref) = _small_hinet_reference()
  model = _SMALL_HINET.clone(layers=cpu_layers.layers(impl))
  outs, grads = _outputs_and_grads(model, params, x)
  for a, b in zip(outs, outs_ref):
    assert _rel(a, b) < 1e-5
  # All parameter gradients as one vector: single near-zero entries (instance-norm biases whose
  # gradients cancel) differ by float32 rounding relative to themselves, not to the gradient.
  flat = lambda tree: jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(tree)])
  assert _rel(flat(grads), flat(grads_ref)) < 1e-5


@pytest.mark.parametrize('impl', ['matmul', 'winograd', 'native'])
def test_forms_run_batch_sharded_over_8_devices(impl):
  """The hand-written forms (reshapes, custom VJPs, custom calls) give the same numbers under
  data parallelism."""
  mesh = sharding.create_mesh()
  assert mesh.devices.size == 8
  x, k, ct = _random((8, 6, 5, 16), 0), _random((3, 3, 16, 24), 1), _random((8, 6, 5, 24), 2)
  x, ct = (jax.device_put(a, sharding.batch_sharding(mesh)) for a in (x, ct))
  k = jax.device_put(k, sharding.replicated(mesh))
  y, grads = _value_and_grads(lambda x, k: convolution.conv3x3(x, k, impl), x, k, ct)
  y_ref, grads_ref = _value_and_grads(convolution.conv_xla, x, k, ct)
  # The CPU kernels' custom calls are not partitioned: XLA gathers their inputs (correct, not
  # parallel; 'auto' does not use them with several devices).
  if impl != 'native':
    assert y.sharding.is_equivalent_to(sharding.batch_sharding(mesh), 4)
  for a, b in zip((y, *grads), (y_ref, *grads_ref)):
    assert _rel(a, b) < 1e-5


def test_inference_compiler_options_are_accepted_and_keep_the_numbers():
  """The options compile (this jaxlib knows them) and change the kernels, not the numbers. Which
  library then runs the convolutions is speed: bench/conv_impl_ab.py --impls=auto+ynn,auto+eigen."""
  options = convolution.inference_compiler_options()
  assert options  # This suite runs on the CPU backend.
  # Big enough for XLA to hand the conv to YNNPACK by default (it keeps tiny ones).
  x, k = _random((2, 32, 32, 32), 0), _random((3, 3, 32, 32), 1)
  # Two function objects: jit caches executables per function, whatever the options.
  default = jax.jit(lambda x, k: convolution.conv_xla(x, k))
  eigen = jax.jit(lambda x, k: convolution.conv_xla(x, k), compiler_options=options)
  assert _rel(eigen(x, k), default(x, k)) < 1e-6
