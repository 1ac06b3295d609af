"""HINet's plain layers, NHWC x HWIO: convolutions as PyTorch defines them, (half) instance norm.

PyTorch's default initialisers: upstream never calls `HINet._initialize` (`hinet_arch.py`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# PyTorch's InstanceNorm2d default; Flax's InstanceNorm defaults to 1e-6.
INSTANCE_NORM_EPS = 1e-5

# PyTorch's kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)): uniform variance scaling 1/3.
torch_kernel_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
# PyTorch takes a transposed conv's fan-in from its outputs: our kernel's last axis.
torch_transposed_kernel_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform',
                                                                in_axis=-1, out_axis=-2)


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default conv bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = fan_in**-0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Conv(nn.Module):
  """PyTorch's `Conv2d(in, features, kernel_size, strides, padding)`: square, symmetric."""

  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, c = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', torch_kernel_init, (k, k, c, self.features), self.param_dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (self.strides,) * 2,
        ((self.padding, self.padding),) * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      y = y + self.param('bias', torch_bias_init(c * k * k), (self.features,),
                         self.param_dtype).astype(self.dtype)
    return y


class UpConv2x2(nn.Module):
  """PyTorch's `ConvTranspose2d(in, features, 2, stride=2)`; kernel `(2, 2, in, out)`, the
  PyTorch weight `(in, out, 2, 2)` transposed with no spatial flip."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', torch_transposed_kernel_init, (2, 2, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param('bias', torch_bias_init(self.features * 4), (self.features,),
                      self.param_dtype)
    # lax.conv_transpose pairs output pixel 2i + a with tap 1 - a: flipped, PyTorch's pairing.
    y = jax.lax.conv_transpose(x.astype(self.dtype), jnp.flip(kernel, (0, 1)).astype(self.dtype),
                               (2, 2), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + bias.astype(self.dtype)


def instance_norm(x: Array, scale: Array, bias: Array, epsilon: float = INSTANCE_NORM_EPS) -> Array:
  """PyTorch's `InstanceNorm2d(affine=True)` of NHWC `x`: over H and W, per sample and channel,
  biased variance; statistics in float32 whatever the input dtype, result in the input dtype."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=(1, 2), keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + epsilon) * scale.astype(jnp.float32)
  return (y + bias.astype(jnp.float32)).astype(x.dtype)


class HalfInstanceNorm(nn.Module):
  """HINet's half instance norm: affine instance norm of the first half of the channels, the
  second half untouched (`hinet_arch.py`, `UNetConvBlock`)."""

  epsilon: float = INSTANCE_NORM_EPS
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    first, second = jnp.split(x, 2, axis=-1)
    c = first.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    return jnp.concatenate([self.normalize(first, scale, bias), second], axis=-1)

  def normalize(self, first: Array, scale: Array, bias: Array) -> Array:
    """The affine instance norm of the normalised half."""
    return instance_norm(first, scale, bias, self.epsilon)
