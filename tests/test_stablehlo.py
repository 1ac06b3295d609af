"""hinet_jax.interop.stablehlo: one exported artifact restores unseen sizes with JAX alone."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from hinet_jax import errors
from hinet_jax import models
from hinet_jax.interop import stablehlo
import data_fixtures

# The README's loader, run where hinet_jax, flax and tensorflow cannot be imported.
LOADER = """
import sys
BLOCKED = ('hinet_jax', 'flax', 'tensorflow')
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in BLOCKED:
      raise ImportError(f'{name} is blocked in this test')
sys.meta_path.insert(0, Block())

import jax
import numpy as np
d, x_path, out_path = sys.argv[1:4]
exp = jax.export.deserialize(open(f'{d}/restore.jax_exported', 'rb').read())
with np.load(f'{d}/weights.npz') as z:
  weights = [z[f'w{i:03d}'] for i in range(len(z.files))]
np.save(out_path, np.asarray(exp.call(weights, np.load(x_path))))
assert not set(BLOCKED) & {m.split('.')[0] for m in sys.modules}
"""


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """A tiny HINet (depth 3: sizes pad to a multiple of 4), its params and its export folder."""
  model = models.HINet(wf=8, depth=3)
  params = data_fixtures.random_params(model)
  out = stablehlo.export_stablehlo(model, params, tmp_path_factory.mktemp('shlo') / 'export')
  return model, params, out


def test_exported_matches_model_apply_on_unseen_sizes(exported):
  model, params, out = exported
  with open(os.path.join(out, stablehlo.EXPORTED_FILE), 'rb') as f:
    exp = jax.export.deserialize(f.read())
  with np.load(os.path.join(out, stablehlo.WEIGHTS_FILE)) as z:
    weights = [z[f'w{i:03d}'] for i in range(len(z.files))]
  assert exp.platforms == stablehlo.PLATFORMS
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x)[1])
  rng = np.random.default_rng(1)
  # Neither size is a multiple of 4; 2 rows take numpy's symmetric pad, 13x10 its reflect pad.
  for shape in ((2, 13, 10, 3), (1, 2, 9, 3)):
    x = rng.uniform(0, 1, shape).astype(np.float32)
    got = np.asarray(exp.call(weights, x))
    assert got.shape == shape
    # Same ops on the same backend; 1e-6 leaves room for the compiler fusing them differently.
    np.testing.assert_allclose(got, np.asarray(apply(params, x)), atol=1e-6)


def test_loader_needs_only_jax(exported, tmp_path):
  model, params, out = exported
  x = np.random.default_rng(2).uniform(0, 1, (1, 11, 7, 3)).astype(np.float32)
  np.save(tmp_path / 'x.npy', x)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', LOADER, out, tmp_path / 'x.npy', tmp_path / 'y.npy'],
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  expected = data_fixtures.restored(model, params, x)
  np.testing.assert_allclose(np.load(tmp_path / 'y.npy'), np.asarray(expected), atol=1e-6)


def test_bfloat16_weights_and_compute(exported):
  model, params, _ = exported
  exp, weights = stablehlo.export_restore(model, params, dtype='bfloat16', platforms=('cpu',))
  assert {w.dtype for w in weights} == {np.dtype(np.uint16)}  # bfloat16 bits, half the bytes
  x = np.random.default_rng(3).uniform(0, 1, (1, 9, 12, 3)).astype(np.float32)
  got = np.asarray(exp.call(weights, x))
  assert got.dtype == np.float32
  # bfloat16 keeps 8 bits of mantissa: about 0.4% of each activation.
  np.testing.assert_allclose(got, data_fixtures.restored(model, params, x), atol=2e-2)


def test_info_and_refusals(exported):
  model, params, out = exported
  with open(os.path.join(out, stablehlo.INFO_FILE)) as f:
    info = json.load(f)
  assert info['model_config'] == models.model_config(model)
  assert info['platforms'] == list(stablehlo.PLATFORMS)
  with pytest.raises(errors.OutputExistsError, match='overwrite'):
    stablehlo.export_stablehlo(model, params, out)
  with pytest.raises(errors.InvalidInputError, match='--dtype=float16'):
    stablehlo.export_restore(model, params, dtype='float16')


def test_local_stats_are_exported():
  """`--local_stats` exports the windowed norm (`models.with_local_stats`) with symbolic sizes."""
  model = models.HINet(wf=8, depth=2)
  params = data_fixtures.random_params(model)
  exp, weights = stablehlo.export_restore(model, params, platforms=('cpu',), local_stats=16)
  local = models.with_local_stats(model, 16)
  x = np.random.default_rng(2).uniform(0, 1, (1, 21, 26, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(exp.call(weights, x)),
                             data_fixtures.restored(local, params, x), atol=1e-5)
