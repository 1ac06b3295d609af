"""hinet_jax.interop.export: the SavedModel restores sizes it has never seen, as JAX does."""

import os
import tempfile

from absl.testing import absltest
import jax
import ml_dtypes
import numpy as np

from absl import app
from hinet_jax.cli import exporter
from hinet_jax.interop import export
from hinet_jax import models
from hinet_jax.models import pretrained
import data_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ExportTest(absltest.TestCase):

  def _tempdir(self):
    # Not absltest's create_tempdir: it needs parsed absl flags, which pytest does not parse.
    return self.enterContext(tempfile.TemporaryDirectory())

  def test_refuses_existing_dir_without_tensorflow_work(self):
    out = self._tempdir()
    with self.assertRaisesRegex(FileExistsError, 'overwrite'):
      export.export_saved_model(models.HINet(wf=8, depth=3), {}, out)


class ExportProgramTest(absltest.TestCase):
  """`hinet-export --format=...`: each format's refusals before any loading, and one format
  written from a converted checkpoint in this process (the formats' own tests run each one)."""

  def _flags(self, **overrides):
    values = dict(checkpoint=self.enterContext(tempfile.TemporaryDirectory()), which='latest',
                  output='/nonexistent/out', format='savedmodel', dtype='float32', license=None,
                  overwrite=False, local_stats=None)
    return type('Flags', (), {**values, **overrides})

  def test_refusals_name_the_flag_and_the_fix(self):
    for overrides, message in (
        (dict(format='onnx', dtype='bfloat16', output='m.onnx'), '--dtype=float32'),
        (dict(format='hub'), '--license=ID'),
        (dict(format='onnx'), 'name it'),
        (dict(checkpoint='/nonexistent/ckpt'), '--checkpoint=/nonexistent/ckpt'),
        (dict(output=REPO), '--overwrite'),
        (dict(format='hub', license='mit', local_stats=0), 'pass --local_stats when you load'),
        (dict(format='onnx', output='m.onnx', local_stats=96), 'no windowed norm'),
    ):
      with self.subTest(**overrides), self.assertRaisesRegex(app.UsageError, message):
        exporter.check_flags(self._flags(**overrides))
    for fmt in ('stablehlo', 'hub'):
      exporter.check_flags(self._flags(format=fmt, dtype='bfloat16', license='mit'))

  def test_hub_bfloat16_from_a_converted_checkpoint(self):
    from hinet_jax.interop import hub  # pylint: disable=g-import-not-at-top
    tmp = self.enterContext(tempfile.TemporaryDirectory())
    model = models.HINet(wf=8, depth=3)
    params = data_fixtures.random_params(model)
    ckpt = pretrained.save_params(os.path.join(tmp, 'ckpt'), params, models.model_config(model))
    out = exporter.export(ckpt, os.path.join(tmp, 'hub'), fmt='hub', license_id='mit',
                          dtype='bfloat16')
    config, loaded = hub.read_hub(out)
    self.assertEqual(models.create_model(**config), model)
    rounded = jax.tree.map(lambda a: np.asarray(a, ml_dtypes.bfloat16).astype(np.float32), params)
    jax.tree.map(np.testing.assert_array_equal, loaded, rounded)
    with open(os.path.join(out, hub.CARD_FILE)) as f:
      card = f.read()
    self.assertIn('Params-only checkpoint', card)
    self.assertIn('`model.safetensors`: bfloat16', card)


if __name__ == '__main__':
  absltest.main()
