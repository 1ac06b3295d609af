"""`train_and_evaluate` in-process on 8 simulated CPU devices: what is saved when."""

import json
import os
import tempfile
from unittest import mock

from absl.testing import absltest
import jax

from hinet_jax import checkpoints
from hinet_jax.configs import tiny as tiny_config
from hinet_jax.train import loop
from hinet_jax.train import validation


def _config(num_train_steps):
  config = tiny_config.get_config()
  config.num_train_steps = num_train_steps
  config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 100
  config.eval.num_panels = 1
  config.tensorboard = False
  return config


class FinalStateTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # As flax's imagenet train_test: the tiny model compiles much faster, runs about as fast.
    previous = jax.config.read('jax_disable_most_optimizations')
    jax.config.update('jax_disable_most_optimizations', True)
    self.addCleanup(jax.config.update, 'jax_disable_most_optimizations', previous)

  def test_a_failed_final_evaluation_loses_no_steps(self):
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    workdir = tmp.name
    with mock.patch.object(validation.Validation, 'final', side_effect=RuntimeError('eval failed')):
      with self.assertRaisesRegex(RuntimeError, 'eval failed'):
        loop.train_and_evaluate(_config(3), workdir)
    self.assertEqual(checkpoints.select_step(workdir, 'latest'), 3)
    self.assertIsNone(checkpoints.read_final_metrics(workdir))

    # The rerun trains nothing and only evaluates the saved final state.
    with mock.patch.object(loop, 'train_loop', side_effect=AssertionError('trained again')):
      with self.assertLogs(level='WARNING') as logs:
        loop.train_and_evaluate(_config(3), workdir)
    self.assertIn('already at the final step 3', '\n'.join(logs.output))
    with open(os.path.join(workdir, checkpoints.FINAL_METRICS_FILE)) as f:
      final = json.load(f)
    self.assertEqual(final['step'], 3)
    self.assertIn('psnr', final)
    self.assertTrue(os.path.exists(os.path.join(workdir, final['panel'])))


if __name__ == '__main__':
  absltest.main()
