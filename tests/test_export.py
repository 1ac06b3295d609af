"""Tests for hinet_jax.interop.export: the SavedModel restores sizes it has never seen, as JAX does."""

import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
import jax
import numpy as np

from hinet_jax.interop import export
from hinet_jax import models
from hinet_jax.models import pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_export(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'hinet_jax.export', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


class ExportTest(absltest.TestCase):

  def _tempdir(self):
    # Not absltest's create_tempdir: it needs parsed absl flags, which pytest does not parse.
    return self.enterContext(tempfile.TemporaryDirectory())

  def test_cli_export_matches_jax_on_unseen_sizes(self):
    tmp = self._tempdir()
    model = models.HINet(wf=8, depth=3)
    rng = np.random.default_rng(0)  # models.init_params takes ~20 s on CPU; shapes suffice.
    params = jax.tree.map(lambda a: rng.normal(0, 0.05, a.shape).astype(np.float32),
                          models.abstract_params(model))
    ckpt = pretrained.save_params(os.path.join(tmp, 'ckpt'), params, models.model_config(model))
    out = os.path.join(tmp, 'saved_model')
    proc = _run_export(f'--checkpoint={ckpt}', f'--output={out}')
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertTrue(os.path.isfile(os.path.join(out, 'saved_model.pb')))

    serve = export.load_serving_fn(out)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    jax_fn = jax.jit(lambda p, x: model.apply({'params': p}, x)[1])
    # Neither size is a multiple of 4 (= 2^(depth-1)); 2 rows also takes the symmetric-pad path.
    for shape in ((2, 13, 10, 3), (1, 2, 9, 3)):
      x = rng.uniform(0, 1, shape).astype(np.float32)
      got = serve(image=tf.constant(x))[export.OUTPUT_NAME].numpy()
      self.assertEqual(got.shape, shape)
      np.testing.assert_allclose(got, np.asarray(jax_fn(params, x)), atol=1e-5)

  def test_refuses_existing_dir_without_tensorflow_work(self):
    out = self._tempdir()
    with self.assertRaisesRegex(FileExistsError, 'overwrite'):
      export.export_saved_model(models.HINet(wf=8, depth=3), {}, out)


if __name__ == '__main__':
  absltest.main()
