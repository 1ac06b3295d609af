"""PSNR and SSIM with the field's conventions, every choice an argument, in jnp (jit-able).

Images are float HWC (-> scalar) or NHWC (-> (N,)). `data_range` is required, never guessed
(BasicSR's `1. if img1.max() <= 1 else 255.` flips on one overshooting pixel); `y_channel` is
MATLAB `rgb2ycbcr` luma; `quantize` rounds the restored image to 8 bits (`tensor2img`); SSIM is
MATLAB `ssim_index` (11x11 Gaussian, sigma 1.5, 'valid', per channel; BasicSR `_ssim`). The
`*_as_official` forms reproduce HINet's own code, quirks included, to put a figure by the paper's.
"""

from typing import Callable, Tuple

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
  """BT.601 luma (..., H, W, 1) of RGB images, as MATLAB `rgb2ycbcr`, on their `data_range`."""
  if x.shape[-1] != 3:
    raise ValueError(f'y_channel=True needs RGB images (3 channels), got shape {x.shape}.')
  weights = jnp.asarray(Y_WEIGHTS, jnp.float32)
  y255 = Y_OFFSET + jnp.einsum('...c,c->...', x / data_range, weights,
                               precision=jax.lax.Precision.HIGHEST)
  return (y255 * (data_range / 255.0))[..., None]


def quantize_8bit(x: Array, *, data_range: float) -> Array:
  """Images clipped and rounded to the 256 levels of an 8-bit PNG, on their `data_range`."""
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
  """PSNR in dB of restored `x` against `y`, per image (+inf where identical).

  Args:
    x: restored image(s) on the `data_range` scale.
    y: targets, same shape.
    data_range: the peak: 1.0 for [0, 1] floats, 255 for 8-bit values.
    crop_border: pixels dropped on each edge.
    y_channel: measure the BT.601 luma instead of RGB.
    quantize: round `x` to 8 bits first.
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
  """The (N, H - 10, W - 10, C) 'valid' SSIM map of NHWC images, per channel."""
  n, h, w, c = x.shape
  if h < SSIM_WINDOW or w < SSIM_WINDOW:
    raise ValueError(f'SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (after '
                     f'crop_border), got {h}x{w}.')
  # On [0, 1], E[x^2] - E[x]^2 keeps float32 precision (SSIM is scale-free).
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
  """SSIM of restored `x` against `y`, per image: the map's mean over pixels and channels
  (arguments as `psnr`)."""
  x, y, single = _prepare(x, y, data_range, crop_border, y_channel, quantize)
  value = jnp.mean(ssim_map(x, y, data_range=data_range), axis=(1, 2, 3))
  return value[0] if single else value


# The official code (megvii-model/HINet basicsr/metrics/psnr_ssim.py), quirks kept: the peak is
# guessed from the output (1 if max <= 1, else 255); RGB SSIM is one 3-D Gaussian SSIM over H, W
# and channels; Y is `to_y_channel` (input taken as 0..255), its SSIM 2-D with 255 constants.
OFFICIAL_BGR_Y_WEIGHTS = (24.966, 128.553, 65.481)
OFFICIAL_SSIM_RADIUS = SSIM_WINDOW // 2


def _official_taps() -> np.ndarray:
  """OpenCV `getGaussianKernel(11, 1.5)` in float64, as the official SSIM builds its kernels."""
  t = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2.0
  g = np.exp(-(t**2) / (2.0 * SSIM_SIGMA**2))
  return g / g.sum()


def _official_front(restored, target, crop_border: int):
  """`reorder_image` (2-D -> HWC), float64, border crop: the start of both official functions."""
  restored, target = np.asarray(restored), np.asarray(target)
  if restored.shape != target.shape:
    raise ValueError(f'Image shapes differ: {restored.shape} vs {target.shape}.')
  if restored.ndim == 2:
    restored, target = restored[..., None], target[..., None]
  if restored.ndim != 3:
    raise ValueError(f'Expected one HWC (or HW) image, got shape {restored.shape}.')
  x, y = restored.astype(np.float64), target.astype(np.float64)
  if crop_border:
    c = int(crop_border)
    x, y = x[c:-c, c:-c, ...], y[c:-c, c:-c, ...]
  return x, y


def official_y_channel(rgb: np.ndarray) -> np.ndarray:
  """BasicSR `to_y_channel` (BGR, float32) of an RGB HWC image taken as 0..255: (H, W, 1)."""
  img = np.asarray(rgb)[..., ::-1].astype(np.float32) / 255.0
  if img.ndim == 3 and img.shape[2] == 3:
    y = np.dot(img, OFFICIAL_BGR_Y_WEIGHTS) + 16.0
    img = (y / 255.0).astype(np.float32)[..., None]
  return img * 255.0


def official_peak(restored: np.ndarray) -> float:
  """The peak the official code guesses from the restored image: 1 or 255."""
  return 1.0 if np.max(restored) <= 1 else 255.0


def psnr_as_official(restored, target, *, crop_border: int = 0, y_channel: bool = False) -> float:
  """PSNR as HINet's `calculate_psnr` computes it, of one HWC RGB image (float, possibly
  overshooting, or uint8) against `target`: the peak guessed from `restored`."""
  x, y = _official_front(restored, target, crop_border)
  if y_channel:
    x, y = official_y_channel(x), official_y_channel(y)
  mse = np.mean((x - y)**2)
  if mse == 0:
    return float('inf')
  return float(20.0 * np.log10(official_peak(x) / np.sqrt(mse)))


def _gaussian_same(x: np.ndarray, axes) -> np.ndarray:
  """The official same-size Gaussian filter over `axes`, replicate borders (separable)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  taps = _official_taps()
  for axis in axes:
    x = ndimage.correlate1d(x, taps, axis=axis, mode='nearest')
  return x


def _ssim_map(x, y, blur: Callable, peak: float):
  """The same-size SSIM map, local statistics by `blur` (numpy or jnp arrays alike)."""
  c1, c2 = (SSIM_K1 * peak)**2, (SSIM_K2 * peak)**2
  mu_x, mu_y = blur(x), blur(y)
  var_x = blur(x * x) - mu_x**2
  var_y = blur(y * y) - mu_y**2
  cov = blur(x * y) - mu_x * mu_y
  return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
      (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def _ssim_same(x: np.ndarray, y: np.ndarray, peak: float, axes) -> float:
  """Mean of the same-size SSIM map with Gaussian statistics over `axes` (float64)."""
  return float(_ssim_map(x, y, lambda a: _gaussian_same(a, axes), peak).mean())


def ssim_as_official(restored, target, *, crop_border: int = 0, y_channel: bool = False) -> float:
  """SSIM as HINet's `calculate_ssim` computes it (`_ssim_3d`, or `_ssim_cly` on Y), in
  float64; arguments as `psnr_as_official`."""
  x, y = _official_front(restored, target, crop_border)
  if y_channel:
    x, y = official_y_channel(x), official_y_channel(y)
    return _ssim_same(x[..., 0].astype(np.float64), y[..., 0].astype(np.float64), 255.0, (0, 1))
  return _ssim_same(x, y, official_peak(x), (0, 1, 2))


def _gaussian_same_jnp(x: Array, axes) -> Array:
  """`_gaussian_same` in jnp on batched arrays: replicate-padded 11-tap sums along `axes`."""
  taps = _official_taps().astype(np.float32)
  r = OFFICIAL_SSIM_RADIUS
  for axis in axes:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    padded = jnp.pad(x, pad, mode='edge')
    n = x.shape[axis]
    # Shifted multiply-adds: float32 on every platform (no conv precision modes).
    x = sum(float(t) * jax.lax.slice_in_dim(padded, k, k + n, axis=axis)
            for k, t in enumerate(taps))
  return x


def _ssim_same_jnp(x: Array, y: Array, axes) -> Array:
  """Per-image mean of the same-size SSIM map of NHWC images on the [0, 1] scale."""
  ssim_map = _ssim_map(x, y, lambda a: _gaussian_same_jnp(a, axes), 1.0)
  return jnp.mean(ssim_map, axis=(1, 2, 3))


def official_metrics(x: Array, y: Array, *, crop_border: int = 0, y_channel: bool = False,
                     on_8bit: bool = False) -> dict:
  """`psnr_as_official` / `ssim_as_official` of a batch in [0, 1], in float32 jnp.

  Args:
    x: restored images, NHWC (or HWC), raw (may overshoot).
    y: targets, same shape.
    crop_border: pixels dropped on each edge.
    y_channel: the official Y channel.
    on_8bit: both images rounded to 8 bits first (`tensor2img`), else raw (`use_image: false`).

  Returns:
    {'psnr_official', 'ssim_official', 'official_peak_flips': 1.0 where the guessed peak is not
    the images' own}, each (N,) (or scalar).
  """
  x, y, single = _as_batch(x, y)
  if on_8bit:
    x = jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0)
    y = jnp.round(jnp.clip(y, 0.0, 1.0) * 255.0)
  if crop_border:
    c = int(crop_border)
    x, y = x[:, c:-c, c:-c], y[:, c:-c, c:-c]
  if y_channel:  # `to_y_channel`: the values are taken as 0..255 whatever their scale.
    weights = jnp.asarray(Y_WEIGHTS, jnp.float32)
    to_y = lambda a: (Y_OFFSET + jnp.einsum('...c,c->...', a / 255.0, weights,
                                            precision=jax.lax.Precision.HIGHEST))[..., None]
    x, y = to_y(x), to_y(y)
  peak = jnp.where(jnp.max(x, axis=(1, 2, 3)) <= 1.0, 1.0, 255.0)
  mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
  psnr_value = jnp.where(mse == 0, jnp.inf, 20.0 * jnp.log10(peak / jnp.sqrt(mse)))
  if y_channel:  # `_ssim_cly`: 2-D, 255 constants whatever the peak.
    ssim_value = _ssim_same_jnp(x / 255.0, y / 255.0, (1, 2))
  else:  # `_ssim_3d`: H, W and channels, constants from the guessed peak.
    scale = peak[:, None, None, None]
    ssim_value = _ssim_same_jnp(x / scale, y / scale, (1, 2, 3))
  own_peak = 255.0 if on_8bit or y_channel else 1.0
  flips = (peak != own_peak).astype(jnp.float32)
  out = {'psnr_official': psnr_value, 'ssim_official': ssim_value, 'official_peak_flips': flips}
  return {k: v[0] for k, v in out.items()} if single else out
