"""HINet (Chen et al., CVPR-W 2021) as Flax linen modules, wired as the published checkpoints.

The wiring follows `shared/reference/ARCHITECTURE.md` tensor for tensor; module names mirror the
official PyTorch names (`down_path_1.0.conv_1` -> `down_path_1_0/conv_1`) so that weight conversion
(`hinet_jax.interop.torch_port`) is a renaming plus a transpose. Layout is NHWC.

Differences from the official code, all additive:
  * any input size works: the image is reflect-padded to a multiple of 2^(depth-1) and the outputs
    are cropped back (the official code crashes on other sizes);
  * `dtype` sets the compute dtype (e.g. bfloat16); instance-norm statistics and the returned images
    are always float32.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hinet_jax.cpu import convolution

Array = jax.Array
Dtype = Any

# PyTorch InstanceNorm2d default; Flax's InstanceNorm defaults to 1e-6 (differs by ~3e-6).
INSTANCE_NORM_EPS = 1e-5

# The variable collection of kernels packed for the CPU kernels' inference (`pack_kernels`):
# `model.apply({'params': p, PACKED: pack_kernels(model, p)}, x)` reads them instead of packing
# every kernel in every call.
PACKED = 'packed'

# The published variants. `HINet(**PRESETS[name])` builds the network that the official
# checkpoint of that name was trained as (shared/reference/official_checkpoint_layout.json).
PRESETS = {
    'sidd-1x': dict(wf=64, hin_position_left=0, hin_position_right=4),
    'sidd-0.5x': dict(wf=32, hin_position_left=0, hin_position_right=4),
    'gopro': dict(wf=64, hin_position_left=3, hin_position_right=4),
    'reds': dict(wf=64, hin_position_left=3, hin_position_right=4),
    'rain13k': dict(wf=64, hin_position_left=0, hin_position_right=4),
}

# The official checkpoint file each preset corresponds to.
PRESET_CHECKPOINTS = {
    'sidd-1x': 'HINet-SIDD-1x.pth',
    'sidd-0.5x': 'HINet-SIDD-0.5x.pth',
    'gopro': 'HINet-GoPro.pth',
    'reds': 'HINet-REDS.pth',
    'rain13k': 'HINet-Rain13k.pth',
}


def torch_kernel_init(fan_in_axes: Sequence[int] = (0, 1, 2)):
  """PyTorch's default conv kernel init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  `kaiming_uniform_(a=sqrt(5))` gives bound sqrt(6 / ((1 + 5) * fan_in)) = 1/sqrt(fan_in). The
  official weights were trained from this init (`HINet._initialize` is never called upstream).

  Args:
    fan_in_axes: kernel axes whose product is PyTorch's fan-in.

  Returns:
    An initializer `(key, shape, dtype) -> Array`.
  """

  def init(key, shape, dtype=jnp.float32):
    fan_in = int(np.prod([shape[a] for a in fan_in_axes]))
    return host_uniform(key, shape, dtype, 1.0 / np.sqrt(fan_in))

  return init


def torch_bias_init(fan_in: int):
  """PyTorch's default conv bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

  def init(key, shape, dtype=jnp.float32):
    return host_uniform(key, shape, dtype, 1.0 / np.sqrt(fan_in))

  return init


def host_uniform(key: Array, shape: Sequence[int], dtype: Dtype, bound: float) -> Array:
  """U(-bound, bound) drawn by numpy on the host, seeded by the JAX `key`.

  `jax.random.uniform` compiles a threefry kernel per parameter, and XLA's CPU compiler takes
  tens of seconds over HINet's ~200 tensors; a host callback compiles instantly and is still a
  pure function of `key`.
  """

  def draw(key_data):
    rng = np.random.default_rng(np.asarray(key_data, np.uint32).ravel().tolist())
    return rng.uniform(-bound, bound, size=tuple(shape)).astype(dtype)

  out = jax.ShapeDtypeStruct(tuple(shape), dtype)
  return jax.pure_callback(draw, out, jax.random.key_data(key))


def _packed_kernel(module: nn.Module, pack) -> Optional[Array]:
  """The module's kernel from the `PACKED` collection, if given. While that collection is
  mutable (`pack_kernels`) it is first filled with `pack()` (None: nothing to pack here)."""
  if module.is_mutable_collection(PACKED):
    packed = pack()
    if packed is not None:
      module.put_variable(PACKED, 'kernel', packed)
  return module.get_variable(PACKED, 'kernel')


class Conv(nn.Module):
  """2-D convolution, NHWC, kernel `(kh, kw, in, out)`, PyTorch-style padding and init.

  Attributes:
    features: output channels.
    kernel_size: square kernel side.
    strides: stride in both spatial dims.
    padding: zero padding on each side (PyTorch `padding=`).
    use_bias: whether to add a bias.
    dtype: compute dtype.
    param_dtype: parameter dtype.
    conv_impl: how the conv runs: 'xla' (lax.conv), 'native' (the hand-written CPU kernels of
      `hinet_jax.cpu.kernels`; CPU, float32), 'winograd' (3x3: F(2x2, 3x3) forward), 'matmul'
      (3x3: im2col) or 'auto' (the fastest measured form for each shape on CPU; always lax.conv
      on GPU/TPU and with several devices). See `hinet_jax.cpu.convolution`.
  """

  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, relu_slope: Optional[float] = None,
               residual: Optional[Array] = None, x2: Optional[Array] = None) -> Array:
    """The convolution (+ bias), then LeakyReLU with `relu_slope` and + `residual` if given (in
    the convolution's own pass over its output where the CPU kernels run it), of `x`, or of `x`
    and `x2` concatenated along the channels (read where they are by the CPU kernels)."""
    k = self.kernel_size
    in_features = x.shape[-1] + (0 if x2 is None else x2.shape[-1])
    fan_in = in_features * k * k
    kernel = self.param('kernel', torch_kernel_init(), (k, k, in_features, self.features),
                        self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param('bias', torch_bias_init(fan_in), (self.features,),
                        self.param_dtype).astype(self.dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if residual is not None:
      residual = residual.astype(self.dtype)
    if x2 is not None:
      x2 = x2.astype(self.dtype)
    packed = _packed_kernel(self, lambda: convolution.pack_for_conv(
        x, kernel, self.strides, self.padding, self.conv_impl, x2))
    return convolution.conv(x, kernel, self.strides, self.padding, self.conv_impl, bias,
                            relu_slope, residual, packed, x2)


class UpConv2x2(nn.Module):
  """Transposed conv with kernel 2, stride 2, padding 0 (PyTorch `ConvTranspose2d(c, o, 2, 2)`).

  The kernel is stored `(2, 2, in, out)` = torch weight `(in, out, 2, 2)`.transpose(2, 3, 0, 1),
  with no spatial flip; `convolution.upconv2x2` runs it.

  Attributes:
    features: output channels.
    dtype: compute dtype.
    param_dtype: parameter dtype.
    conv_impl: see `Conv`.
  """

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    # PyTorch computes the fan-in of a transposed conv weight (in, out, kh, kw) from dim 1 (out).
    kernel = self.param('kernel', torch_kernel_init((0, 1, 3)), (2, 2, c, self.features),
                        self.param_dtype)
    bias = self.param('bias', torch_bias_init(self.features * 4), (self.features,),
                      self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    packed = _packed_kernel(self, lambda: convolution.pack_for_upconv(x, kernel, self.conv_impl))
    return convolution.upconv2x2(x, kernel, self.conv_impl, bias.astype(self.dtype), packed)


class InstanceNorm(nn.Module):
  """Instance norm over H, W with learned affine, as PyTorch `InstanceNorm2d(c, affine=True)`,
  of the first `num_normalized` channels (all if None); the others pass through unchanged.

  Statistics are computed in float32 whatever the input dtype (biased variance, eps 1e-5); the
  result is cast back to the input dtype. HINet's half instance norm is `num_normalized = C / 2`:
  one per-channel map (x - m) * a + b over all channels (m = 0, a = 1, b = 0 on the second half)
  instead of split, normalise and concatenate, which XLA:CPU ran as a copy of the half, two
  reductions and a concatenation: 3.9 -> 2.7 ms forward and 23 -> 5.6 ms with the gradient on a
  256x256x64 activation (bench/README.md, levers log).

  Attributes:
    epsilon: added to the variance.
    param_dtype: parameter dtype.
    num_normalized: how many leading channels to normalise (None: all).
  """

  epsilon: float = INSTANCE_NORM_EPS
  param_dtype: Dtype = jnp.float32
  num_normalized: Optional[int] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1] if self.num_normalized is None else self.num_normalized
    scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normalized = x32[..., :c]
    mean = jnp.mean(normalized, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(normalized - mean), axis=(1, 2), keepdims=True)
    gain = jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
    shift = jnp.broadcast_to(bias.astype(jnp.float32), gain.shape)
    rest = x.shape[-1] - c
    if rest:  # pass-through channels: (x - 0) * 1 + 0, exactly x
      pad = lambda t, value: jnp.pad(t, ((0, 0),) * 3 + ((0, rest),), constant_values=value)
      mean, gain, shift = pad(mean, 0.0), pad(gain, 1.0), pad(shift, 0.0)
    return ((x32 - mean) * gain + shift).astype(x.dtype)


class ConvBlock(nn.Module):
  """HINet's `UNetConvBlock`: the encoder block (with HIN, CSFF, downsampling) and decoder body.

  out = lrelu(conv_2(lrelu(HIN(conv_1(x))))) + identity(x) [+ csff_enc(enc) + csff_dec(dec)],
  then optionally `downsample` (4x4, stride 2, pad 1, no bias).

  Attributes:
    features: output channels.
    downsample: whether to also return the downsampled output.
    relu_slope: LeakyReLU negative slope.
    use_hin: apply half instance norm after conv_1.
    use_csff: accept cross-stage feature fusion inputs (stage 2 encoder, levels < depth-1).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  features: int
  downsample: bool = False
  relu_slope: float = 0.2
  use_hin: bool = False
  use_csff: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, enc: Optional[Array] = None, dec: Optional[Array] = None,
               x2: Optional[Array] = None):
    """The block of `x`, or of `x` and `x2` concatenated along the channels (the decoder's
    upsampled input and skip: never concatenated where the CPU kernels run the convolutions)."""
    conv = functools.partial(Conv, self.features, dtype=self.dtype, param_dtype=self.param_dtype,
                             conv_impl=self.conv_impl)
    # The LeakyReLUs and the adds ride on the convolutions (their outputs' one pass on CPU,
    # bench/README.md); same arithmetic, in the same order, as the formula above.
    if self.use_hin:
      out = conv(3, padding=1, name='conv_1')(x, x2=x2)
      out = InstanceNorm(param_dtype=self.param_dtype, num_normalized=out.shape[-1] // 2,
                         name='norm')(out)
      out = nn.leaky_relu(out, self.relu_slope)
    else:
      out = conv(3, padding=1, name='conv_1')(x, relu_slope=self.relu_slope, x2=x2)
    identity = conv(1, name='identity')(x, x2=x2)
    out = conv(3, padding=1, name='conv_2')(out, relu_slope=self.relu_slope, residual=identity)
    if self.use_csff:
      if enc is None or dec is None:
        raise ValueError('A CSFF block needs both the stage-1 encoder and decoder features.')
      # (out + csff_enc(enc)) + csff_dec(dec), each add in the next convolution's store.
      out = conv(3, padding=1, name='csff_enc')(enc, residual=out)
      out = conv(3, padding=1, name='csff_dec')(dec, residual=out)
    if not self.downsample:
      return out
    down = conv(4, strides=2, padding=1, use_bias=False, name='downsample')(out)
    return down, out


class UpBlock(nn.Module):
  """HINet's `UNetUpBlock`: 2x2 transposed conv up, joined with the skip along the channels, a
  plain ConvBlock."""

  features: int
  relu_slope: float = 0.2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, skip: Array) -> Array:
    up = UpConv2x2(self.features, dtype=self.dtype, param_dtype=self.param_dtype,
                   conv_impl=self.conv_impl, name='up')(x)
    return ConvBlock(self.features, relu_slope=self.relu_slope, dtype=self.dtype,
                     param_dtype=self.param_dtype, conv_impl=self.conv_impl,
                     name='conv_block')(up, x2=skip)


class SAM(nn.Module):
  """Supervised attention module between the stages.

  Returns `(feat, img)`: `img = conv2(d) + x` is stage 1's restored image and
  `feat = conv1(d) * sigmoid(conv3(img)) + d` feeds stage 2.
  """

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, d: Array, x: Array):
    conv = functools.partial(Conv, kernel_size=3, padding=1, dtype=self.dtype,
                             param_dtype=self.param_dtype, conv_impl=self.conv_impl)
    img = conv(x.shape[-1], name='conv2')(d) + x.astype(self.dtype)
    attn = jax.nn.sigmoid(conv(self.features, name='conv3')(img))
    feat = conv(self.features, name='conv1')(d) * attn + d
    return feat, img


class HINet(nn.Module):
  """HINet: two U-Nets joined by SAM and cross-stage feature fusion.

  Attributes:
    wf: base width; level i has 2^i * wf channels (64 for the 1x models, 32 for 0.5x).
    depth: number of encoder levels (5 in every published model).
    relu_slope: LeakyReLU negative slope.
    hin_position_left: first encoder level with half instance norm (inclusive).
    hin_position_right: last encoder level with half instance norm (inclusive).
    in_chn: image channels.
    dtype: compute dtype (float32, or bfloat16 on TPU/GPU). Norm statistics stay float32.
    param_dtype: parameter dtype.
    conv_impl: convolution forms, 'auto' | 'xla' | 'native' | 'winograd' | 'matmul' (see `Conv`
      and `hinet_jax.cpu.convolution`). Numerics only (no parameter change): every form agrees with
      lax.conv to ~1e-7 relative in float32. 'auto' is lax.conv on GPU/TPU.

  Call with `x`, float NHWC images in [0, 1] of any height and width. Returns the tuple
  `(stage1, stage2)`, both float32 NHWC of the input's shape: each stage's predicted residual plus
  the input image. `stage2` is the restored image; `stage1` is supervised by the loss too.
  """

  wf: int = 64
  depth: int = 5
  relu_slope: float = 0.2
  hin_position_left: int = 0
  hin_position_right: int = 4
  in_chn: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, conv_impl=self.conv_impl)
    width = lambda level: (2**level) * self.wf
    last_level = self.depth - 1
    self.conv_01 = Conv(self.wf, 3, padding=1, **kw)
    self.conv_02 = Conv(self.wf, 3, padding=1, **kw)
    # Lists of submodules are named `<attr>_<index>`, mirroring PyTorch's `<attr>.<index>`.
    self.down_path_1, self.down_path_2 = [
        [ConvBlock(width(i), downsample=i < last_level, relu_slope=self.relu_slope,
                   use_hin=self.hin_position_left <= i <= self.hin_position_right,
                   use_csff=stage == 2 and i < last_level, **kw)
         for i in range(self.depth)]
        for stage in (1, 2)]
    # Decoder j runs from the deepest skip (level depth-2) up to level 0.
    levels_up = range(self.depth - 2, -1, -1)
    self.up_path_1, self.up_path_2 = [
        [UpBlock(width(level), self.relu_slope, **kw) for level in levels_up] for _ in (1, 2)]
    self.skip_conv_1, self.skip_conv_2 = [
        [Conv(width(level), 3, padding=1, **kw) for level in levels_up] for _ in (1, 2)]
    self.sam12 = SAM(self.wf, **kw)
    self.cat12 = Conv(self.wf, 1, **kw)
    self.last = Conv(self.in_chn, 3, padding=1, **kw)

  def _unet(self, x, down_path, up_path, skip_conv, csff=None):
    """One stage's U-Net. Returns (last decoder output, encoder skips, decoder outputs)."""
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
    x = pad_to_multiple(x.astype(jnp.float32), 2**(self.depth - 1))
    image = x.astype(self.dtype)
    d1, encs, decs = self._unet(self.conv_01(image), self.down_path_1, self.up_path_1,
                                self.skip_conv_1)
    feat, stage1 = self.sam12(d1, image)
    g = self.cat12(self.conv_02(image), x2=feat)
    # Stage-2 encoder level i fuses the stage-1 encoder skip and decoder output of level i.
    csff = [(encs[i], decs[-i - 1]) for i in range(self.depth - 1)]
    d2, _, _ = self._unet(g, self.down_path_2, self.up_path_2, self.skip_conv_2, csff)
    stage2 = self.last(d2).astype(jnp.float32) + x
    return stage1.astype(jnp.float32)[:, :h, :w], stage2[:, :h, :w]


def pad_to_multiple(x: Array, multiple: int) -> Array:
  """Reflect-pads the bottom/right of NHWC `x` so that H and W are multiples of `multiple`.

  Reflection (not zeros) keeps the padded border image-like, so the crop back is clean. Images
  smaller than the padding fall back to symmetric padding (reflection needs pad < size).
  """
  h, w = x.shape[1:3]
  ph, pw = (-h) % multiple, (-w) % multiple
  if ph == 0 and pw == 0:
    return x
  mode = 'reflect' if ph < h and pw < w else 'symmetric'
  return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)


def create_model(preset: Optional[str] = None, **overrides) -> HINet:
  """Builds a HINet from a preset name and/or constructor keyword arguments.

  Args:
    preset: one of `PRESETS` ('sidd-1x', 'sidd-0.5x', 'gopro', 'reds', 'rain13k') or None.
    **overrides: `HINet` fields that replace the preset's (e.g. `dtype=jnp.bfloat16`).

  Returns:
    The `HINet` module.
  """
  kwargs = {}
  if preset is not None:
    if preset not in PRESETS:
      raise ValueError(f'Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.')
    kwargs.update(PRESETS[preset])
  kwargs.update(overrides)
  if isinstance(kwargs.get('dtype'), str):
    kwargs['dtype'] = jnp.dtype(kwargs['dtype'])
  if isinstance(kwargs.get('param_dtype'), str):
    kwargs['param_dtype'] = jnp.dtype(kwargs['param_dtype'])
  return HINet(**kwargs)


def model_config(model: HINet) -> dict:
  """The JSON-able constructor arguments of `model` (stored beside every checkpoint)."""
  return dict(wf=model.wf, depth=model.depth, relu_slope=model.relu_slope,
              hin_position_left=model.hin_position_left,
              hin_position_right=model.hin_position_right, in_chn=model.in_chn,
              dtype=jnp.dtype(model.dtype).name, param_dtype=jnp.dtype(model.param_dtype).name,
              conv_impl=model.conv_impl)


def init_params(model: HINet, rng: Array, image_size: int = 64) -> Any:
  """Initialises the parameters of `model` (the image size only shapes the trace)."""
  size = max(image_size, 2**(model.depth - 1))
  x = jnp.zeros((1, size, size, model.in_chn), jnp.float32)
  return jax.jit(lambda rng: model.init(rng, x)['params'])(rng)


def abstract_params(model: HINet) -> Any:
  """Shapes and dtypes of `model`'s parameters, without computing them."""
  x = jax.ShapeDtypeStruct((1, 2**(model.depth - 1), 2**(model.depth - 1), model.in_chn),
                           jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)['params']


def pack_kernels(model: nn.Module, params: Any, in_chn: Optional[int] = None) -> Any:
  """The `PACKED` variable collection of `model` for `params`: every kernel that runs on the
  CPU kernels, packed as they read it, for inference.

  `model.apply({'params': params, PACKED: packed}, x)` then gives the same outputs as with
  `params` alone without packing every kernel in every call, and runs the 3x3 convolutions from
  32 channels as Winograd F(4x4, 3x3) or F(2x2, 3x3) (kernels transformed here, once: 4x or
  2.25x fewer multiplies; the 1x forward ~1.6x faster on 2 CPU cores, bench/README.md): equal to
  float rounding there (relative 1e-6 to 7e-6 a convolution), bit for bit elsewhere. Not
  differentiable: for inference only. Empty where nothing runs on the CPU kernels (GPU, TPU,
  bfloat16, several devices). Run it under `jax.jit`: the convolutions of the small forward pass
  it traces are dead code there.

  Args:
    model: a linen module built from this module's `Conv` and `UpConv2x2` (e.g. `HINet`).
    params: its parameters.
    in_chn: input channels of the model; None: its `in_chn` (HINet's), else 3.

  Returns:
    A pytree (a dict, maybe empty) to pass as the `PACKED` collection.
  """
  side = 2**(getattr(model, 'depth', 1) - 1)
  in_chn = getattr(model, 'in_chn', 3) if in_chn is None else in_chn
  x = jnp.zeros((1, side, side, in_chn), jnp.float32)
  _, variables = model.apply({'params': params}, x, mutable=PACKED)
  return variables.get(PACKED, {})


def count_params(params: Any) -> int:
  """Total number of parameter elements."""
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def forward_macs(model: HINet, height: int = 256, width: int = 256, batch: int = 1) -> float:
  """Forward multiply-accumulates of `model` on a `batch x height x width` input.

  Taken from XLA's cost analysis of the compiled forward pass (flops / 2), including the padding
  to a multiple of 16, for the model with `conv_impl='xla'`: the direct convolutions' work. (XLA
  cannot see into the CPU kernels' custom calls, and Winograd does fewer multiplies than the
  convolution it computes.)

  Returns:
    MACs as a float (divide by 1e9 for GMACs).
  """
  model = model.clone(conv_impl='xla')
  params = abstract_params(model)
  x = jax.ShapeDtypeStruct((batch, height, width, model.in_chn), jnp.float32)
  lowered = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(params, x)
  cost = lowered.compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops']) / 2.0
