"""Losses against hand-computed values and the official PyTorch formulas."""

import math

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from hinet_jax.train import losses


class LossesTest(absltest.TestCase):

  def test_psnr_loss_of_constant_offset_is_minus_weighted_psnr(self):
    target = jnp.full((2, 8, 8, 3), 0.5)
    d = 0.1
    loss = losses.psnr_loss(target + d, target, weight=0.5)
    # mse = d^2 -> 10/ln10 * ln(d^2 + 1e-8) = -PSNR (up to the 1e-8).
    expected = 0.5 * 10.0 / math.log(10.0) * math.log(d * d + 1e-8)
    self.assertAlmostEqual(float(loss), expected, places=4)
    self.assertAlmostEqual(float(loss), -0.5 * 20.0, places=3)  # PSNR of offset 0.1 is 20 dB.

  def test_psnr_loss_is_per_image_mean_of_logs(self):
    rng = np.random.default_rng(0)
    pred, target = rng.random((3, 4, 4, 3), np.float32), rng.random((3, 4, 4, 3), np.float32)
    mse = ((pred - target)**2).reshape(3, -1).mean(1)
    expected = 10.0 / np.log(10.0) * np.mean(np.log(mse + 1e-8))
    self.assertAlmostEqual(float(losses.psnr_loss(pred, target, 1.0)), expected, places=4)

  def test_identical_images_stay_finite(self):
    x = jnp.ones((1, 4, 4, 3))
    self.assertAlmostEqual(float(losses.psnr_loss(x, x, 1.0)), 10 / math.log(10) * math.log(1e-8),
                           places=3)

  def test_l1(self):
    pred = jnp.zeros((1, 2, 2, 3))
    target = jnp.full((1, 2, 2, 3), 0.25)
    self.assertAlmostEqual(float(losses.l1_loss(pred, target, 2.0)), 0.5)

  def test_multi_stage_sums_stages_in_float32(self):
    target = jnp.zeros((1, 4, 4, 3))
    outs = (jnp.full((1, 4, 4, 3), 0.1, jnp.bfloat16), jnp.full((1, 4, 4, 3), 0.2))
    total, per_stage = losses.multi_stage_loss(outs, target, name='l1', weight=1.0)
    self.assertEqual(total.dtype, jnp.float32)
    self.assertLen(per_stage, 2)
    self.assertAlmostEqual(float(total), float(per_stage[0] + per_stage[1]), places=6)
    self.assertAlmostEqual(float(per_stage[1]), 0.2, places=6)

  def test_unknown_loss_names_the_option(self):
    with self.assertRaisesRegex(ValueError, 'config.loss.name'):
      losses.get_loss_fn('l2')

  def test_matches_torch_psnr_loss_formula(self):
    torch = __import__('torch')
    rng = np.random.default_rng(1)
    pred, target = rng.random((2, 8, 8, 3), np.float32), rng.random((2, 8, 8, 3), np.float32)
    tp, tt = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (pred, target))
    # basicsr/models/losses/losses.py PSNRLoss.forward, toY=False, loss_weight 0.5.
    ref = 0.5 * (10 / np.log(10)) * torch.log(((tp - tt)**2).mean(dim=(1, 2, 3)) + 1e-8).mean()
    self.assertAlmostEqual(float(losses.psnr_loss(pred, target, 0.5)), float(ref), places=5)


if __name__ == '__main__':
  absltest.main()
