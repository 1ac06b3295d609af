"""`psnr_as_official` / `ssim_as_official` against a transcription of HINet's metric code.

The transcription below follows megvii-model/HINet basicsr/metrics/psnr_ssim.py and BasicSR's
`to_y_channel` / `bgr2ycbcr` line by line in plain numpy (dense kernels, explicit replicate
padding), with the images in the BGR order the official validation hands them over in.
"""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

import hinet_jax
from hinet_jax.evaluation import metrics


def _gauss_1d():
  t = np.arange(11) - 5.0
  g = np.exp(-t**2 / (2 * 1.5**2))
  return g / g.sum()


def _official_to_y(img):
  """`to_y_channel` of a BGR image on the 0..255 scale (float32 as upstream)."""
  img = img.astype(np.float32) / 255.
  if img.ndim == 3 and img.shape[2] == 3:
    y = np.dot(img, [24.966, 128.553, 65.481]) + 16.0  # bgr2ycbcr(y_only=True)
    img = (y / 255.).astype(np.float32)[..., None]
  return img * 255.


def _official_psnr(img1, img2, crop_border, test_y_channel):
  img1, img2 = img1.astype(np.float64), img2.astype(np.float64)
  if crop_border:
    img1 = img1[crop_border:-crop_border, crop_border:-crop_border, ...]
    img2 = img2[crop_border:-crop_border, crop_border:-crop_border, ...]
  if test_y_channel:
    img1, img2 = _official_to_y(img1), _official_to_y(img2)
  mse = np.mean((img1 - img2)**2)
  if mse == 0:
    return float('inf')
  max_value = 1. if img1.max() <= 1 else 255.
  return 20. * np.log10(max_value / np.sqrt(mse))


def _dense_filter(img, kernel):
  """Same-size correlation with a dense kernel over replicate-padded borders (any rank)."""
  r = kernel.shape[0] // 2
  padded = np.pad(img, [(r, r)] * img.ndim, mode='edge')
  windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape)
  return np.tensordot(windows, kernel, axes=img.ndim)


def _ssim_from(img1, img2, kernel, c1, c2):
  mu1, mu2 = _dense_filter(img1, kernel), _dense_filter(img2, kernel)
  s1 = _dense_filter(img1**2, kernel) - mu1**2
  s2 = _dense_filter(img2**2, kernel) - mu2**2
  s12 = _dense_filter(img1 * img2, kernel) - mu1 * mu2
  return (((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) /
          ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))).mean()


def _official_ssim(img1, img2, crop_border, test_y_channel):
  img1, img2 = img1.astype(np.float64), img2.astype(np.float64)
  if crop_border:
    img1 = img1[crop_border:-crop_border, crop_border:-crop_border, ...]
    img2 = img2[crop_border:-crop_border, crop_border:-crop_border, ...]
  g = _gauss_1d()
  if test_y_channel:  # _ssim_cly: 2-D window, replicate borders, 255 constants.
    img1, img2 = _official_to_y(img1)[..., 0], _official_to_y(img2)[..., 0]
    return _ssim_from(img1.astype(np.float64), img2.astype(np.float64), np.outer(g, g),
                      (0.01 * 255)**2, (0.03 * 255)**2)
  max_value = 1 if img1.max() <= 1 else 255  # _ssim_3d: 11x11x11 over H, W, C.
  kernel = np.stack([np.outer(g, g) * k for k in g], axis=0)
  return _ssim_from(img1, img2, kernel, (0.01 * max_value)**2, (0.03 * max_value)**2)


def _float_pair(seed, shape=(26, 22, 3), noise=0.04, overshoot=False):
  rng = np.random.default_rng(seed)
  gt = rng.uniform(0.05, 0.95, shape).astype(np.float32)
  out = (gt + rng.normal(0, noise, shape)).astype(np.float32)
  out = np.clip(out, 0, 1)
  if overshoot:
    out[3, 4, 1] = 1.02  # One pixel over 1.0: the official peak becomes 255.
  return out, np.round(gt * 255) / np.float32(255)


def _uint8_pair(seed, shape=(26, 22, 3)):
  out, gt = _float_pair(seed, shape)
  return np.round(out * 255).astype(np.uint8), np.round(gt * 255).astype(np.uint8)


# (name, make the pair, crop_border, y_channel). The functions take RGB; the transcription gets
# the BGR images the official Y conversion expects (without Y the order does not matter).
_CASES = (
    ('float', lambda: _float_pair(0), 0, False),
    ('float_overshoot', lambda: _float_pair(1, overshoot=True), 0, False),
    ('float_crop', lambda: _float_pair(2, overshoot=True), 3, False),
    ('uint8', lambda: _uint8_pair(3), 0, False),
    ('uint8_crop', lambda: _uint8_pair(4), 4, False),
    ('uint8_y', lambda: _uint8_pair(5), 0, True),
    ('uint8_y_crop', lambda: _uint8_pair(6), 2, True),
    ('float_y', lambda: _float_pair(7), 0, True),
    ('gray_uint8', lambda: _uint8_pair(8, (24, 24, 1)), 0, False),
)


class OfficialFunctionsTest(parameterized.TestCase):

  @parameterized.named_parameters(*_CASES)
  def test_psnr_matches_transcription(self, make, crop, y_channel):
    out, gt = make()
    want = _official_psnr(out[..., ::-1], gt[..., ::-1], crop, y_channel)
    got = hinet_jax.metrics.psnr_as_official(out, gt, crop_border=crop, y_channel=y_channel)
    self.assertAlmostEqual(got, want, delta=1e-4)

  @parameterized.named_parameters(*_CASES)
  def test_ssim_matches_transcription(self, make, crop, y_channel):
    out, gt = make()
    want = _official_ssim(out[..., ::-1], gt[..., ::-1], crop, y_channel)
    got = hinet_jax.metrics.ssim_as_official(out, gt, crop_border=crop, y_channel=y_channel)
    self.assertAlmostEqual(got, want, delta=1e-5)

  def test_overshoot_moves_psnr_to_the_255_peak(self):
    out, gt = _float_pair(9, overshoot=True)
    fixed = float(metrics.psnr(out, gt, data_range=1.0))
    self.assertAlmostEqual(metrics.psnr_as_official(out, gt) - fixed, 20 * np.log10(255),
                           places=3)
    clipped = np.clip(out, 0, 1)
    self.assertAlmostEqual(metrics.psnr_as_official(clipped, gt),
                           float(metrics.psnr(clipped, gt, data_range=1.0)), places=3)

  def test_identical_images(self):
    _, gt = _uint8_pair(10)
    self.assertEqual(metrics.psnr_as_official(gt, gt), float('inf'))
    self.assertAlmostEqual(metrics.ssim_as_official(gt, gt), 1.0, places=12)

  def test_shape_mismatch_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'shapes differ'):
      metrics.psnr_as_official(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))

  def test_3d_ssim_matches_torch_conv3d(self):
    """The official `_ssim_3d` kernel construction run through torch itself (float32)."""
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      self.skipTest('torch is not installed')
    out, gt = _uint8_pair(11)
    g = _gauss_1d()
    conv = torch.nn.Conv3d(1, 1, (11, 11, 11), padding=(5, 5, 5), bias=False,
                           padding_mode='replicate')
    with torch.no_grad():
      conv.weight[0, 0] = torch.tensor(np.stack([np.outer(g, g) * k for k in g], axis=0))
      f = lambda a: conv(a[None, None])[0, 0]
      a, b = (torch.tensor(v[..., ::-1].astype(np.float64)).float() for v in (out, gt))
      mu1, mu2 = f(a), f(b)
      s1, s2, s12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
      c1, c2 = (0.01 * 255)**2, (0.03 * 255)**2
      want = float((((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) /
                    ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))).mean())
    self.assertAlmostEqual(metrics.ssim_as_official(out, gt), want, delta=1e-5)


class BatchedOfficialMetricsTest(parameterized.TestCase):
  """`official_metrics` (jnp, what the protocols run) against the float64 functions."""

  @parameterized.parameters((0, False), (2, False), (0, True))
  def test_float_output_matches(self, crop, y_channel):
    pairs = [_float_pair(20), _float_pair(21, overshoot=True), _float_pair(22)]
    out = np.stack([p[0] for p in pairs])
    gt = np.stack([p[1] for p in pairs])
    got = {k: np.asarray(v) for k, v in metrics.official_metrics(
        out, gt, crop_border=crop, y_channel=y_channel).items()}
    for i, (o, t) in enumerate(pairs):
      kw = dict(crop_border=crop, y_channel=y_channel)
      self.assertAlmostEqual(got['psnr_official'][i], metrics.psnr_as_official(o, t, **kw),
                             delta=1e-4)
      self.assertAlmostEqual(got['ssim_official'][i], metrics.ssim_as_official(o, t, **kw),
                             delta=1e-5)
    # Only the overshooting image flips (the Y channel is always on the 255 scale upstream).
    np.testing.assert_array_equal(got['official_peak_flips'], [0, 0, 0] if y_channel else
                                  [0, 1, 0])

  @parameterized.parameters(False, True)
  def test_8bit_protocol_rounds_both_images(self, y_channel):
    out, gt = _float_pair(23, noise=0.01)
    out = out * 1.01  # Overshoots: rounding clips it as a saved PNG would.
    got = metrics.official_metrics(out, gt, y_channel=y_channel, on_8bit=True)
    out8 = np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
    gt8 = np.round(gt * 255).astype(np.uint8)
    self.assertAlmostEqual(float(got['psnr_official']),
                           metrics.psnr_as_official(out8, gt8, y_channel=y_channel), delta=1e-4)
    self.assertAlmostEqual(float(got['ssim_official']),
                           metrics.ssim_as_official(out8, gt8, y_channel=y_channel), delta=1e-5)
    self.assertEqual(float(got['official_peak_flips']), 0.0)


if __name__ == '__main__':
  absltest.main()
