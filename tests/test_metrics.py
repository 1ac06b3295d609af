"""Tests for hinet_jax.evaluation.metrics against hand-computed values and independent implementations."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from hinet_jax.evaluation import metrics


def _rand(shape, seed=0):
  return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def _reference_ssim_channel(a, b, data_range):
  """MATLAB ssim_index in float64 with scipy: Gaussian 11x11 sigma 1.5, 'valid' region."""
  t = np.arange(11) - 5.0
  g = np.exp(-t**2 / (2 * 1.5**2))
  g /= g.sum()
  win = np.outer(g, g)
  filt = lambda z: ndimage.correlate(z, win, mode='constant')[5:-5, 5:-5]
  a, b = a.astype(np.float64), b.astype(np.float64)
  mu_a, mu_b = filt(a), filt(b)
  var_a = filt(a * a) - mu_a**2
  var_b = filt(b * b) - mu_b**2
  cov = filt(a * b) - mu_a * mu_b
  c1, c2 = (0.01 * data_range)**2, (0.03 * data_range)**2
  m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
  return m.mean()


def _reference_y(rgb01):
  """BT.601 luma on the 0..255 scale (MATLAB rgb2ycbcr), in float64."""
  r, g, b = [rgb01[..., i].astype(np.float64) for i in range(3)]
  return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


class PsnrTest(parameterized.TestCase):

  @parameterized.parameters(0.1, 0.01, 1 / 255)
  def test_constant_offset_is_exact(self, d):
    y = _rand((20, 24, 3)) * 0.5
    x = y + np.float32(d)
    self.assertAlmostEqual(float(metrics.psnr(x, y, data_range=1.0)), 20 * np.log10(1 / d),
                           places=3)
    # The 255 scale gives the same number.
    self.assertAlmostEqual(float(metrics.psnr(x * 255, y * 255, data_range=255.0)),
                           20 * np.log10(1 / d), places=3)

  def test_identical_is_inf(self):
    y = _rand((16, 16, 3))
    self.assertEqual(float(metrics.psnr(y, y, data_range=1.0)), np.inf)

  def test_batch_gives_one_value_per_image_and_jits(self):
    y = _rand((3, 16, 16, 3))
    x = y + np.array([0.1, 0.01, 0.0], np.float32)[:, None, None, None]
    fn = jax.jit(lambda a, b: metrics.psnr(a, b, data_range=1.0, crop_border=2))
    out = np.asarray(fn(x, y))
    self.assertEqual(out.shape, (3,))
    np.testing.assert_allclose(out[:2], [20.0, 40.0], atol=1e-3)
    self.assertEqual(out[2], np.inf)
    np.testing.assert_allclose(np.asarray(metrics.psnr(x[0], y[0], data_range=1.0)), out[0],
                               atol=1e-4)

  def test_crop_border_excludes_the_border(self):
    y = _rand((20, 20, 3))
    x = y.copy()
    x[:3] += 0.5  # Error only in the top 3 rows.
    self.assertLess(float(metrics.psnr(x, y, data_range=1.0)), 30)
    self.assertEqual(float(metrics.psnr(x, y, data_range=1.0, crop_border=3)), np.inf)

  def test_quantize_rounds_the_output_to_8_bits(self):
    y = np.round(_rand((16, 16, 3)) * 255) / 255
    x = y + np.float32(0.3 / 255)  # Less than half a level: rounding removes it.
    self.assertLess(float(metrics.psnr(x, y, data_range=1.0)), 60)
    self.assertGreater(float(metrics.psnr(x, y, data_range=1.0, quantize=True)), 100)
    # Overshoots are clipped like a saved PNG.
    self.assertEqual(float(metrics.psnr(np.ones_like(y) * 1.2, np.ones_like(y), data_range=1.0,
                                        quantize=True)), np.inf)

  def test_y_channel_matches_matlab_formula(self):
    x, y = _rand((18, 22, 3), 1), _rand((18, 22, 3), 2)
    ref_mse = np.mean((_reference_y(x) - _reference_y(y))**2)
    expected = 10 * np.log10(255.0**2 / ref_mse)
    got = float(metrics.psnr(x, y, data_range=1.0, y_channel=True))
    self.assertAlmostEqual(got, expected, places=3)
    got255 = float(metrics.psnr(x * 255, y * 255, data_range=255.0, y_channel=True))
    self.assertAlmostEqual(got255, expected, places=3)

  def test_rgb_to_y_range(self):
    black_white = np.array([[[0, 0, 0], [1, 1, 1]]], np.float32)
    np.testing.assert_allclose(np.asarray(metrics.rgb_to_y(black_white, data_range=1.0))[..., 0],
                               [[16 / 255, 235 / 255]], atol=1e-5)

  def test_data_range_is_required(self):
    with self.assertRaises(TypeError):
      metrics.psnr(_rand((4, 4, 3)), _rand((4, 4, 3)))  # pylint: disable=missing-kwoa


class SsimTest(parameterized.TestCase):

  @parameterized.parameters((1.0, 0), (255.0, 0), (1.0, 4))
  def test_matches_reference_per_channel(self, data_range, crop):
    y = _rand((32, 40, 3), 3)
    x = np.clip(y + np.random.default_rng(4).normal(0, 0.1, y.shape), 0, 1).astype(np.float32)
    x, y = x * data_range, y * data_range
    got = float(metrics.ssim(x, y, data_range=data_range, crop_border=crop))
    c = slice(crop, -crop) if crop else slice(None)
    ref = np.mean([_reference_ssim_channel(x[c, c, i], y[c, c, i], data_range) for i in range(3)])
    self.assertAlmostEqual(got, ref, places=5)

  def test_matches_skimage_gaussian(self):
    y = _rand((30, 30, 3), 5)
    x = np.clip(y * 0.8 + 0.1, 0, 1).astype(np.float32)
    ref = structural_similarity(x.astype(np.float64), y.astype(np.float64), channel_axis=-1,
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0)
    # skimage averages the same 'valid' map (it crops (win-1)/2 = 5 pixels after filtering).
    self.assertAlmostEqual(float(metrics.ssim(x, y, data_range=1.0)), ref, places=5)

  def test_y_channel_matches_reference(self):
    x, y = _rand((24, 24, 3), 6), _rand((24, 24, 3), 7)
    x = (0.7 * x + 0.3 * y).astype(np.float32)
    ref = _reference_ssim_channel(_reference_y(x), _reference_y(y), 255.0)
    self.assertAlmostEqual(float(metrics.ssim(x, y, data_range=1.0, y_channel=True)), ref,
                           places=5)

  def test_identical_is_one_and_batch_shape(self):
    y = _rand((2, 16, 16, 3))
    np.testing.assert_allclose(np.asarray(metrics.ssim(y, y, data_range=1.0)), [1.0, 1.0],
                               atol=1e-5)

  def test_quantize_changes_ssim(self):
    y = np.round(_rand((16, 16, 3), 8) * 255) / 255
    x = y + np.float32(0.4 / 255)
    self.assertEqual(float(metrics.ssim(x, y, data_range=1.0, quantize=True)), 1.0)
    self.assertLess(float(metrics.ssim(x, y, data_range=1.0)), 1.0)

  def test_too_small_raises(self):
    with self.assertRaisesRegex(ValueError, 'at least 11x11'):
      metrics.ssim(_rand((12, 12, 3)), _rand((12, 12, 3)), data_range=1.0, crop_border=1)


if __name__ == '__main__':
  absltest.main()
