"""PSNR and SSIM with the image-restoration field's conventions, every choice an argument.

All functions take float images HWC (one image -> scalar) or NHWC (a batch -> one value per image,
shape (N,)), are written in `jnp` (they run under `jax.jit`) and are vectorised over the batch.

Conventions, and where they come from:
  * `data_range` is required: 1.0 for float images in [0, 1], 255 for 8-bit values. It is never
    guessed from the data (BasicSR's `max_value = 1. if img1.max() <= 1 else 255.` switches scale on
    one overshooting pixel).
  * `y_channel=True` measures the luma of ITU-R BT.601 as MATLAB's `rgb2ycbcr` (studio swing,
    16..235 on the 8-bit scale): Y = 16 + 65.481 R + 128.553 G + 24.966 B with RGB in [0, 1]
    (BasicSR `bgr2ycbcr(y_only=True)`), expressed back on the `data_range` scale.
  * `quantize=True` rounds the restored image `x` to 8 bits first (clip to [0, 1], x255, round), as
    the published numbers computed from saved PNGs (BasicSR `tensor2img`). The target `y` is used
    as given: targets are 8-bit data already.
  * SSIM: Wang et al. 2004 / MATLAB `ssim_index`: 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
    K2 = 0.03, 'valid' filtering (the map is 10 pixels smaller on each axis), per channel then
    averaged over channels (BasicSR `_ssim`).
  * PSNR is per image; average PSNR over images, not MSE (BasicSR `nondist_validation`).
"""

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# MATLAB rgb2ycbcr luma row (BT.601, studio swing) for RGB in [0, 1]; output on the 0..255 scale.
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_batch(x: Array, y: Array) -> Tuple[Array, Array, bool]:
  """Casts to float32 and adds a batch axis to HWC inputs; checks the shapes match."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if x.shape != y.shape:
    raise ValueError(f'Image shapes differ: {x.shape} vs {y.shape}.')
  if x.ndim == 3:
    return x[None], y[None], True
  if x.ndim != 4:
    raise ValueError(f'Expected HWC or NHWC images, got shape {x.shape}.')
  return x, y, False


def rgb_to_y(x: Array, *, data_range: float) -> Array:
  """BT.601 luma of RGB images, as MATLAB `rgb2ycbcr(...)(:, :, 1)`.

  Args:
    x: float RGB images (..., H, W, 3) on the `data_range` scale.
    data_range: 1.0 or 255 (the scale of `x`).

  Returns:
    Y as (..., H, W, 1) on the same scale (16/255..235/255 of `data_range` for in-range input).
  """
  if x.shape[-1] != 3:
    raise ValueError(f'y_channel=True needs RGB images (3 channels), got shape {x.shape}.')
  weights = jnp.asarray(Y_WEIGHTS, jnp.float32)
  y255 = Y_OFFSET + jnp.einsum('...c,c->...', x / data_range, weights,
                               precision=jax.lax.Precision.HIGHEST)
  return (y255 * (data_range / 255.0))[..., None]


def quantize_8bit(x: Array, *, data_range: float) -> Array:
  """Rounds images to the 256 levels of an 8-bit PNG (after clipping), on the same scale.

  Args:
    x: float images on the `data_range` scale.
    data_range: 1.0 or 255.

  Returns:
    `x` clipped to [0, data_range] and rounded to multiples of data_range / 255.
  """
  levels = jnp.round(jnp.clip(x / data_range, 0.0, 1.0) * 255.0)
  return levels * (data_range / 255.0)


def _prepare(x, y, data_range, crop_border, y_channel, quantize):
  """Shared front end: batch axis, optional rounding, border crop, optional Y conversion."""
  if data_range is None or data_range <= 0:
    raise ValueError(f'data_range must be a positive number (1.0 or 255), got {data_range}.')
  x, y, single = _as_batch(x, y)
  if quantize:
    x = quantize_8bit(x, data_range=data_range)
  if crop_border:
    c = int(crop_border)
    x = x[:, c:-c, c:-c]
    y = y[:, c:-c, c:-c]
  if y_channel:
    x = rgb_to_y(x, data_range=data_range)
    y = rgb_to_y(y, data_range=data_range)
  return x, y, single


def psnr(x: Array, y: Array, *, data_range: float, crop_border: int = 0,
         y_channel: bool = False, quantize: bool = False) -> Array:
  """Peak signal-to-noise ratio in dB, per image.

  Args:
    x: restored image(s), float HWC or NHWC on the `data_range` scale.
    y: target image(s), same shape.
    data_range: peak value: 1.0 for [0, 1] floats, 255 for 8-bit values. Required.
    crop_border: pixels dropped on each edge before measuring.
    y_channel: measure the BT.601 luma (MATLAB rgb2ycbcr) instead of RGB.
    quantize: round `x` to 8 bits first (the protocol of metrics computed on saved PNGs).

  Returns:
    float32 scalar for HWC input, (N,) for NHWC; +inf where the images are identical.
  """
  x, y, single = _prepare(x, y, data_range, crop_border, y_channel, quantize)
  mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
  value = 10.0 * jnp.log10(data_range**2 / mse)  # mse == 0 -> +inf, as BasicSR returns.
  return value[0] if single else value


def gaussian_kernel_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """Normalised 1-D Gaussian taps (OpenCV `getGaussianKernel(size, sigma)` for sigma > 0)."""
  t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-(t**2) / (2.0 * sigma**2))
  return (g / g.sum()).astype(np.float32)


def _filter_valid(x: Array, taps: Array) -> Array:
  """Separable 'valid' filtering of (B, H, W) maps with the 1-D `taps` on both axes."""
  k = taps.shape[0]
  z = x[..., None]  # (B, H, W, 1)
  dn = ('NHWC', 'HWIO', 'NHWC')
  hp = jax.lax.Precision.HIGHEST
  z = jax.lax.conv_general_dilated(z, taps.reshape(k, 1, 1, 1), (1, 1), 'VALID',
                                   dimension_numbers=dn, precision=hp)
  z = jax.lax.conv_general_dilated(z, taps.reshape(1, k, 1, 1), (1, 1), 'VALID',
                                   dimension_numbers=dn, precision=hp)
  return z[..., 0]


def ssim_map(x: Array, y: Array, *, data_range: float) -> Array:
  """The SSIM map of NHWC images, per channel, 'valid' region only.

  Args:
    x: float NHWC images on the `data_range` scale.
    y: same shape.
    data_range: peak value (1.0 or 255).

  Returns:
    (N, H - 10, W - 10, C) SSIM values.
  """
  n, h, w, c = x.shape
  if h < SSIM_WINDOW or w < SSIM_WINDOW:
    raise ValueError(f'SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (after '
                     f'crop_border), got {h}x{w}.')
  # Normalise to [0, 1] so that E[x^2] - E[x]^2 keeps float32 precision; SSIM is scale-free when
  # C1, C2 scale with the range, so this equals the computation on the data_range scale.
  to_maps = lambda a: jnp.moveaxis(a / data_range, 3, 1).reshape(n * c, h, w)
  a, b = to_maps(x), to_maps(y)
  taps = jnp.asarray(gaussian_kernel_1d())
  mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
  var_a = _filter_valid(a * a, taps) - mu_a**2
  var_b = _filter_valid(b * b, taps) - mu_b**2
  cov = _filter_valid(a * b, taps) - mu_a * mu_b
  c1, c2 = SSIM_K1**2, SSIM_K2**2
  num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
  den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
  out = (num / den).reshape(n, c, h - SSIM_WINDOW + 1, w - SSIM_WINDOW + 1)
  return jnp.moveaxis(out, 1, 3)


def ssim(x: Array, y: Array, *, data_range: float, crop_border: int = 0,
         y_channel: bool = False, quantize: bool = False) -> Array:
  """Structural similarity (Gaussian 11x11, sigma 1.5, 'valid'), per image.

  Args:
    x: restored image(s), float HWC or NHWC on the `data_range` scale.
    y: target image(s), same shape.
    data_range: peak value: 1.0 for [0, 1] floats, 255 for 8-bit values. Required.
    crop_border: pixels dropped on each edge before measuring.
    y_channel: measure the BT.601 luma (MATLAB rgb2ycbcr) instead of RGB.
    quantize: round `x` to 8 bits first.

  Returns:
    float32 scalar for HWC input, (N,) for NHWC: the mean of the SSIM map over pixels, then over
    channels.
  """
  x, y, single = _prepare(x, y, data_range, crop_border, y_channel, quantize)
  value = jnp.mean(ssim_map(x, y, data_range=data_range), axis=(1, 2, 3))
  return value[0] if single else value
