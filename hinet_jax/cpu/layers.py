"""HINet's layers for the CPU backend: the same parameter tree as `hinet_jax.models`, run on the
C++ kernels (`convolution`), the blocks' LeakyReLUs, adds and joins fused into the convolutions.

`layers_for` swaps only the parts it knows; `model_check` refuses a model whose blocks these would
not compute. At inference `prepare_inference` packs the kernels once into `PACKED`.
"""

import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hinet_jax import models
from hinet_jax.cpu import convolution
from hinet_jax.models.layers import torch_bias_init, torch_kernel_init
from hinet_jax.models.layers import torch_transposed_kernel_init

Array = jax.Array

PACKED = 'packed'


def _packed_kernel(module: nn.Module, pack) -> Optional[Array]:
  """The module's kernel from `PACKED`, first filled with `pack()` while that is mutable."""
  if module.is_mutable_collection(PACKED):
    packed = pack()
    if packed is not None:
      module.put_variable(PACKED, 'kernel', packed)
  return module.get_variable(PACKED, 'kernel')


class Conv(models.Conv):
  """`models.Conv` with fusions, on the C++ kernels where they apply; `impl`: see
  `convolution.CONV_IMPLS`."""

  plain_twin = models.Conv
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, relu_slope: Optional[float] = None,
               residual: Optional[Array] = None, x2: Optional[Array] = None) -> Array:
    k = self.kernel_size
    in_features = x.shape[-1] + (0 if x2 is None else x2.shape[-1])
    kernel = self.param('kernel', torch_kernel_init, (k, k, in_features, self.features),
                        self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param('bias', torch_bias_init(in_features * k * k), (self.features,),
                        self.param_dtype).astype(self.dtype)
    cast = lambda a: None if a is None else a.astype(self.dtype)
    x, kernel, residual, x2 = cast(x), cast(kernel), cast(residual), cast(x2)
    packed = _packed_kernel(self, lambda: convolution.pack_for_conv(
        x, kernel, self.strides, self.padding, self.impl, x2))
    return convolution.conv(x, kernel, self.strides, self.padding, self.impl, bias, relu_slope,
                            residual, packed, x2)


class UpConv2x2(models.UpConv2x2):
  """`models.UpConv2x2` on the C++ kernels where they apply (`convolution.upconv2x2`)."""

  plain_twin = models.UpConv2x2
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', torch_transposed_kernel_init, (2, 2, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param('bias', torch_bias_init(self.features * 4), (self.features,),
                      self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    packed = _packed_kernel(self, lambda: convolution.pack_for_upconv(x, kernel, self.impl))
    return convolution.upconv2x2(x, kernel, self.impl, bias.astype(self.dtype), packed)


class HalfInstanceNorm(models.HalfInstanceNorm):
  """`models.HalfInstanceNorm` as one per-channel affine map over all channels: XLA:CPU ran the
  split and concatenation as separate passes (bench/README.md)."""

  plain_twin = models.HalfInstanceNorm

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1] // 2
    scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normalized = x32[..., :c]
    mean = jnp.mean(normalized, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(normalized - mean), axis=(1, 2), keepdims=True)
    gain = jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
    shift = jnp.broadcast_to(bias.astype(jnp.float32), gain.shape)
    rest = x.shape[-1] - c
    pad = lambda t, value: jnp.pad(t, ((0, 0),) * 3 + ((0, rest),), constant_values=value)
    mean, gain, shift = pad(mean, 0.0), pad(gain, 1.0), pad(shift, 0.0)
    return ((x32 - mean) * gain + shift).astype(x.dtype)


class FusedConvBlock(models.ConvBlock):
  """`models.ConvBlock` with its LeakyReLUs, adds and the decoder's join in the convolutions."""

  plain_twin = models.ConvBlock

  @nn.compact
  def __call__(self, x: Array, enc: Optional[Array] = None, dec: Optional[Array] = None,
               x2: Optional[Array] = None):
    conv = functools.partial(self.conv, self.features, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    if self.use_hin:
      out = conv(3, padding=1, name='conv_1')(x, x2=x2)
      out = self.norm(param_dtype=self.param_dtype, name='norm')(out)
      out = nn.leaky_relu(out, self.relu_slope)
    else:
      out = conv(3, padding=1, name='conv_1')(x, relu_slope=self.relu_slope, x2=x2)
    identity = conv(1, name='identity')(x, x2=x2)
    out = conv(3, padding=1, name='conv_2')(out, relu_slope=self.relu_slope, residual=identity)
    if self.use_csff:
      if enc is None or dec is None:
        raise ValueError('A CSFF block needs both the stage-1 encoder and decoder features.')
      out = conv(3, padding=1, name='csff_enc')(enc, residual=out)
      out = conv(3, padding=1, name='csff_dec')(dec, residual=out)
    if not self.downsample:
      return out
    return conv(4, strides=2, padding=1, use_bias=False, name='downsample')(out), out


class FusedUpBlock(models.UpBlock):
  """`models.UpBlock` whose body reads the upsampled features and the skip in place."""

  plain_twin = models.UpBlock

  @nn.compact
  def __call__(self, x: Array, skip: Array) -> Array:
    up = self.up_conv(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name='up')(x)
    return self.block(self.features, relu_slope=self.relu_slope, dtype=self.dtype,
                      param_dtype=self.param_dtype, conv=self.conv, name='conv_block')(up, x2=skip)


def layers(impl: str = 'auto') -> models.Layers:
  """The CPU backend's layers, every convolution in the form `impl` (benchmarks and tests)."""
  return models.Layers(conv=functools.partial(Conv, impl=impl),
                       up_conv=functools.partial(UpConv2x2, impl=impl), block=FusedConvBlock,
                       up_block=FusedUpBlock, norm=HalfInstanceNorm)


LAYERS = models.Layers(conv=Conv, up_conv=UpConv2x2, block=FusedConvBlock, up_block=FusedUpBlock,
                       norm=HalfInstanceNorm)
# Each plain part and the CPU backend's own (`plain_twin`, which `backends` swaps back); a norm
# other than these is kept as it is.
_SWAPS = {fused.plain_twin: fused
          for fused in (Conv, UpConv2x2, FusedConvBlock, FusedUpBlock, HalfInstanceNorm)}


def layers_for(plain: models.Layers) -> Optional[models.Layers]:
  """`plain` with each stock part swapped for its fused twin (any other norm kept), or None if
  a convolution or block has no twin."""
  swapped = {}
  for field in dataclasses.fields(plain):
    part = getattr(plain, field.name)
    if part in _SWAPS.values() or (field.name == 'norm' and part not in _SWAPS):
      swapped[field.name] = part
    elif part in _SWAPS:
      swapped[field.name] = _SWAPS[part]
    else:
      return None
  return models.Layers(**swapped)


@functools.partial(jax.jit, static_argnums=(0, 2))
def prepare_inference(model: nn.Module, params: Any, low_memory: bool = False) -> dict:
  """`{PACKED: kernels}` for `model.apply({'params': params, **this}, x)` at inference, packed
  once per set of weights (empty where nothing runs on the C++ kernels). Not differentiable;
  jitted, so the traced forward's convolutions are dead code. `low_memory`: the large kernels
  packed directly instead of by Winograd (`convolution.compact_packing`): less memory, slower."""
  side = getattr(model, 'size_multiple', 1)
  x = jnp.zeros((1, side, side, getattr(model, 'in_chn', 3)), jnp.float32)
  _, variables = model.apply({'params': params}, x, mutable=PACKED)
  packed = variables.get(PACKED, {})
  if low_memory:
    kernels = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    packed = jax.tree_util.tree_map_with_path(
        lambda path, p: convolution.compact_packing(kernels[path], p), packed)
  return {PACKED: packed} if packed else {}
