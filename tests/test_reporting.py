"""Where metrics go: TensorBoard event files with `config.tensorboard`, the log without."""

import pathlib
import tempfile

from absl import logging
from absl.testing import absltest
import numpy as np

from hinet_jax.train import reporting


class WriterTest(absltest.TestCase):

  def test_tensorboard_writer_writes_readable_scalars_and_images(self):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    workdir = pathlib.Path(tmp.name)
    writer = reporting.create_writer(workdir, tensorboard=True)
    writer.write_scalars(7, {'eval/psnr': 31.25})
    writer.write_images(7, {'panel': np.zeros((1, 8, 8, 3), np.float32)})
    writer.flush()
    writer.close()
    events = list(workdir.glob('events.out.tfevents*'))
    self.assertLen(events, 1)
    found = {}
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
      for value in event.summary.value:
        found[value.tag] = (event.step, value)
    self.assertEqual(found['eval/psnr'][0], 7)
    self.assertAlmostEqual(float(tf.make_ndarray(found['eval/psnr'][1].tensor)), 31.25, places=5)
    self.assertIn('panel', found)

  def test_log_writer_logs_scalars_and_writes_no_files(self):
    with tempfile.TemporaryDirectory() as workdir:
      writer = reporting.create_writer(workdir, tensorboard=False)
      verbosity = logging.get_verbosity()  # Another test may have raised absl's threshold.
      logging.set_verbosity(logging.INFO)
      self.addCleanup(logging.set_verbosity, verbosity)
      with self.assertLogs(level='INFO') as logs:
        writer.write_scalars(3, {'train/loss': 0.5, 'train/lr': 1e-3})
      writer.write_images(3, {'panel': np.zeros((1, 8, 8, 3))})
      writer.write_hparams({'lr': 1e-3})
      writer.close()
      self.assertEqual(list(pathlib.Path(workdir).iterdir()), [])
    self.assertIn('[3] train/loss=0.5, train/lr=0.001', '\n'.join(logs.output))

  def test_eta_text(self):
    self.assertEqual(reporting.eta_text(100, 10.0), '10s')
    self.assertEqual(reporting.eta_text(245, 1.0), '4m05s')
    self.assertEqual(reporting.eta_text(3720, 1.0), '1h02m')


if __name__ == '__main__':
  absltest.main()
