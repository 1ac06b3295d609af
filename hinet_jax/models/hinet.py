"""HINet (Chen et al., CVPR-W 2021): two U-Nets joined by a supervised attention module, NHWC.

Wiring and module names follow megvii-model/HINet `basicsr/models/archs/hinet_arch.py`
(`down_path_1.0.conv_1` -> `down_path_1_0/conv_1`), so converting weights is a renaming plus a
transpose. `HINet.layers` supplies the layer classes (`hinet_jax.backends` may swap them). Added:
any input size (reflect-padded to a multiple of 2^(depth-1)) and a compute `dtype`.
"""

import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hinet_jax.models.layers import Conv, HalfInstanceNorm, UpConv2x2

Array = jax.Array
Dtype = Any
ModuleDef = Any


class ConvBlock(nn.Module):
  """HINet's `UNetConvBlock`: the encoder block (HIN, CSFF, downsampling) and the decoder's body.

  out = lrelu(conv_2(lrelu(norm(conv_1(x))))) + identity(x) [+ csff_enc(enc) + csff_dec(dec)],
  then, if `downsample`, `(downsample(out), out)` by a 4x4/stride-2 conv.

  Attributes:
    use_hin: apply `norm` (built as `norm(param_dtype=..., name='norm')`) after conv_1.
    use_csff: take the cross-stage feature fusion inputs (stage 2's encoder, levels < depth-1).
  """

  features: int
  downsample: bool = False
  relu_slope: float = 0.2
  use_hin: bool = False
  use_csff: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef = HalfInstanceNorm

  @nn.compact
  def __call__(self, x: Array, enc: Optional[Array] = None, dec: Optional[Array] = None):
    conv = functools.partial(self.conv, self.features, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    out = conv(3, padding=1, name='conv_1')(x)
    if self.use_hin:
      out = self.norm(param_dtype=self.param_dtype, name='norm')(out)
    out = nn.leaky_relu(out, self.relu_slope)
    out = nn.leaky_relu(conv(3, padding=1, name='conv_2')(out), self.relu_slope)
    out = out + conv(1, name='identity')(x)
    if self.use_csff:
      if enc is None or dec is None:
        raise ValueError('A CSFF block needs both the stage-1 encoder and decoder features.')
      out = out + conv(3, padding=1, name='csff_enc')(enc) + conv(3, padding=1, name='csff_dec')(dec)
    if not self.downsample:
      return out
    return conv(4, strides=2, padding=1, use_bias=False, name='downsample')(out), out


class UpBlock(nn.Module):
  """HINet's `UNetUpBlock`: 2x2 transposed conv up, joined with the skip, a plain ConvBlock."""

  features: int
  relu_slope: float = 0.2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv: ModuleDef = Conv
  up_conv: ModuleDef = UpConv2x2
  block: ModuleDef = ConvBlock

  @nn.compact
  def __call__(self, x: Array, skip: Array) -> Array:
    up = self.up_conv(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name='up')(x)
    joined = jnp.concatenate([up, skip.astype(up.dtype)], axis=-1)
    return self.block(self.features, relu_slope=self.relu_slope, dtype=self.dtype,
                      param_dtype=self.param_dtype, conv=self.conv, name='conv_block')(joined)


class SAM(nn.Module):
  """Supervised attention module between the stages.

  Returns `(feat, img)`: `img = conv2(d) + x` is stage 1's restored image, and
  `feat = conv1(d) * sigmoid(conv3(img)) + d` feeds stage 2.
  """

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv: ModuleDef = Conv

  @nn.compact
  def __call__(self, d: Array, x: Array):
    conv = functools.partial(self.conv, kernel_size=3, padding=1, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    img = conv(x.shape[-1], name='conv2')(d) + x.astype(self.dtype)
    attn = jax.nn.sigmoid(conv(self.features, name='conv3')(img))
    feat = conv(self.features, name='conv1')(d) * attn + d
    return feat, img


@dataclasses.dataclass(frozen=True)
class Layers:
  """The layer and block classes a HINet is built from: the one seam for how its convolutions run.

  A backend may swap them for its own with the same parameters and function (`hinet_jax.backends`).
  """

  conv: ModuleDef = Conv
  up_conv: ModuleDef = UpConv2x2
  block: ModuleDef = ConvBlock
  up_block: ModuleDef = UpBlock
  norm: ModuleDef = HalfInstanceNorm


XLA_LAYERS = Layers()


class HINet(nn.Module):
  """HINet: two U-Nets joined by SAM and cross-stage feature fusion (CSFF).

  Attributes:
    wf: base width; level i has 2^i * wf channels (64 for the 1x models, 32 for 0.5x).
    depth: number of encoder levels.
    hin_position_left, hin_position_right: encoder levels with half instance norm (inclusive).
    layers: the layer classes (chosen by `hinet_jax.backends`; not part of the architecture).

  Call with NHWC images in [0, 1] of any size. Returns float32 `(stage1, stage2)` of the input's
  shape; `stage2` is the restored image, and the loss supervises both.
  """

  wf: int = 64
  depth: int = 5
  relu_slope: float = 0.2
  hin_position_left: int = 0
  hin_position_right: int = 4
  in_chn: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  layers: Layers = XLA_LAYERS

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv, block, up_block = self.layers.conv, self.layers.block, self.layers.up_block
    width = lambda level: (2**level) * self.wf
    last_level = self.depth - 1
    self.conv_01 = conv(self.wf, 3, padding=1, **kw)
    self.conv_02 = conv(self.wf, 3, padding=1, **kw)
    self.down_path_1, self.down_path_2 = [
        [block(width(i), downsample=i < last_level, relu_slope=self.relu_slope,
               use_hin=self.hin_position_left <= i <= self.hin_position_right,
               use_csff=stage == 2 and i < last_level, conv=conv, norm=self.layers.norm, **kw)
         for i in range(self.depth)]
        for stage in (1, 2)]
    # Decoder j runs from the deepest skip (level depth-2) up to level 0.
    levels_up = range(self.depth - 2, -1, -1)
    self.up_path_1, self.up_path_2 = [
        [up_block(width(level), self.relu_slope, conv=conv, up_conv=self.layers.up_conv,
                  block=block, **kw) for level in levels_up]
        for _ in (1, 2)]
    self.skip_conv_1, self.skip_conv_2 = [
        [conv(width(level), 3, padding=1, **kw) for level in levels_up] for _ in (1, 2)]
    self.sam12 = SAM(self.wf, conv=conv, **kw)
    self.cat12 = conv(self.wf, 1, **kw)
    self.last = conv(self.in_chn, 3, padding=1, **kw)

  @property
  def size_multiple(self) -> int:
    return size_multiple(self.depth)

  def _unet(self, x, down_path, up_path, skip_conv, csff=None):
    """One stage's U-Net: (last decoder output, encoder skips, decoder outputs)."""
    encs = []
    for i, block in enumerate(down_path[:-1]):
      x, skip = block(x, *csff[i]) if csff else block(x)
      encs.append(skip)
    x = down_path[-1](x)
    decs = []
    for j, up in enumerate(up_path):
      x = up(x, skip_conv[j](encs[-j - 1]))
      decs.append(x)
    return x, encs, decs

  def __call__(self, x: Array):
    if x.ndim != 4 or x.shape[-1] != self.in_chn:
      raise ValueError(f'HINet expects NHWC images with {self.in_chn} channels, got shape '
                       f'{x.shape}.')
    h, w = x.shape[1:3]
    x = pad_to_multiple(x.astype(jnp.float32), self.size_multiple)
    image = x.astype(self.dtype)
    d1, encs, decs = self._unet(self.conv_01(image), self.down_path_1, self.up_path_1,
                                self.skip_conv_1)
    feat, stage1 = self.sam12(d1, image)
    g = self.cat12(jnp.concatenate([self.conv_02(image), feat], axis=-1))
    # Stage-2 encoder level i fuses the stage-1 encoder skip and decoder output of level i.
    csff = [(encs[i], decs[-i - 1]) for i in range(self.depth - 1)]
    d2, _, _ = self._unet(g, self.down_path_2, self.up_path_2, self.skip_conv_2, csff)
    stage2 = self.last(d2).astype(jnp.float32) + x
    return stage1.astype(jnp.float32)[:, :h, :w], stage2[:, :h, :w]


def restored_image(outputs):
  """The restored image among a model's outputs: a HINet's last stage, or the output itself."""
  return outputs[-1] if isinstance(outputs, (tuple, list)) else outputs


def size_multiple(depth: int) -> int:
  """Image sides a HINet of `depth` levels takes unpadded: each level below the first halves."""
  return 2**(depth - 1)


def pad_to_multiple(x: Array, multiple: int) -> Array:
  """Reflect-pads the bottom/right of NHWC `x` to multiples of `multiple` (symmetric where the
  image is smaller than the padding)."""
  h, w = x.shape[1:3]
  ph, pw = (-h) % multiple, (-w) % multiple
  if ph == 0 and pw == 0:
    return x
  mode = 'reflect' if ph < h and pw < w else 'symmetric'
  return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)
