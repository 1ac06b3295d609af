"""Local statistics at inference (TLC): the windowed half instance norm, against direct sums."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hinet_jax import backends
from hinet_jax import models
from hinet_jax.cpu import layers as cpu_layers
from hinet_jax.cpu import model_check
from hinet_jax.evaluation import inference

TINY = dict(wf=8, depth=2, hin_position_left=0, hin_position_right=1)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _window_index(n: int, k: int) -> np.ndarray:
  """(n, k) indices of each position's window: centred, or the nearest one inside the image."""
  k = min(k, n)
  start = np.clip(np.arange(n) - (k - 1) // 2, 0, n - k)
  return start[:, None] + np.arange(k)


class DirectLocalNorm(models.LocalHalfInstanceNorm):
  """The reference: each position's window gathered whole, mean and variance in two passes."""

  @nn.compact
  def __call__(self, x):
    first, second = jnp.split(x, 2, axis=-1)
    c = first.shape[-1]
    scale = self.param('scale', lambda *_: jnp.ones(c))
    bias = self.param('bias', lambda *_: jnp.zeros(c))
    k = self.level_window(x.shape[-1])
    rows, cols = _window_index(x.shape[1], k), _window_index(x.shape[2], k)
    windows = first[:, rows[:, None, :, None], cols[None, :, None, :], :]  # N H W kh kw C
    mean = windows.mean(axis=(3, 4))
    var = jnp.square(windows - mean[:, :, :, None, None]).mean(axis=(3, 4))
    y = (first - mean) / jnp.sqrt(var + self.epsilon) * scale + bias
    return jnp.concatenate([y, second], axis=-1)


def _tiny_model(**overrides):
  model = models.create_model(**{**TINY, **overrides})
  params = models.init_params(model, 0)
  # Non-trivial norm affines, so a swapped scale/bias would show.
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.2 * rng.standard_normal(p.shape).astype(p.dtype)
      if 'norm' in jax.tree_util.keystr(path) else p, params)
  return model, params


@pytest.fixture(scope='module')
def tiny():
  return _tiny_model()


def _image(h, w, seed=1):
  return jax.random.uniform(jax.random.key(seed), (1, h, w, 3))


def test_box_mean_is_the_mean_over_each_positions_window():
  x = np.random.default_rng(0).standard_normal((2, 8, 11, 2)).astype(np.float32)
  for k in (4, 9):  # 9: taller than the image, narrower than it
    rows, cols = _window_index(8, k), _window_index(11, k)
    want = x[:, rows[:, None, :, None], cols[None, :, None, :], :].mean(axis=(3, 4))
    np.testing.assert_allclose(models.local_stats.box_mean(jnp.asarray(x), k), want, atol=1e-5)


def test_a_window_over_the_whole_image_is_the_global_norm(tiny):
  model, params = tiny
  x = _image(32, 32)
  local = models.with_local_stats(model, 64)  # levels: 64, 32 on 32, 16 pixels
  want, got = [jax.jit(m.apply)({'params': params}, x)[1] for m in (model, local)]
  assert _rel(got, want) < 1e-5


def test_the_model_equals_a_direct_windowed_reference(tiny):
  model, params = tiny
  x = _image(24, 40)  # not square: each axis its own windows
  local = models.with_local_stats(model, 12)  # levels: 12, 6, 3 feature pixels
  assert local.layers.norm == models.LocalStats(12, 8)
  reference = local.clone(layers=models.Layers(
      norm=lambda **kw: DirectLocalNorm(window=12, wf=8, **kw)))
  want, got = [jax.jit(m.apply)({'params': params}, x)[1] for m in (reference, local)]
  assert _rel(got, want) < 1e-5
  # And the window matters: the global norm is elsewhere.
  assert _rel(jax.jit(model.apply)({'params': params}, x)[1], want) > 1e-3


def test_the_cpu_backend_keeps_local_stats(tiny):
  """The fused blocks call the norm part as it is; neither backend silently drops it."""
  model, params = tiny
  local = models.with_local_stats(model, 12)
  assert model_check.why_not_supported(local) is None
  fused = local.clone(layers=cpu_layers.layers_for(local.layers))
  assert fused.layers.norm == models.LocalStats(12, 8)
  assert fused.layers.block is cpu_layers.FusedConvBlock
  assert backends.resolve('xla').build(fused).layers.norm == models.LocalStats(12, 8)
  x = _image(24, 40)
  want, got = [jax.jit(m.apply)({'params': params}, x)[1] for m in (local, fused)]
  assert _rel(got, want) < 1e-5
  # Swapped on a model already built for the CPU backend, too.
  assert models.with_local_stats(fused, 12).layers == fused.layers


def test_window_defaults_and_errors(tiny):
  assert models.default_window(256) == models.DEFAULT_WINDOW == 384  # TLC: 256 crops
  assert models.default_window(64) == 96
  with pytest.raises(ValueError, match='at least 1'):
    models.with_local_stats(tiny[0], 0)
  with pytest.raises(ValueError, match='half instance norm'):
    models.with_local_stats(tiny[0].clone(layers=models.Layers(norm=lambda **kw: None)), 96)


def test_tiles_overlapping_by_two_windows_match_the_whole_image():
  """Each tile keeps pixels at least one window from its cut edges (margin = overlap / 2), whose
  windows then lie inside it: tiled and whole agree within 1% (global statistics: over 3%)."""
  model, params = _tiny_model(depth=3, hin_position_right=2)
  yy, xx = np.mgrid[:96, :128]
  image = 0.5 + 0.4 * np.sin(yy / 9.0)[..., None] * np.cos(xx / 13.0)[..., None]
  image = np.repeat(image, 3, axis=-1).astype(np.float32)
  image[:, 64:] *= 0.3  # a dark half: one tile's global statistics are not the image's
  errors = {}
  for name, m in [('global', model), ('local', models.with_local_stats(model, 16))]:
    forward = inference.Forward(m, 'xla')
    whole = np.asarray(forward(params, image[None]))[0]
    errors[name] = _rel(inference.restore_image(forward, params, image, tile=48, overlap=32), whole)
  assert errors['local'] < 0.01 < 0.03 < errors['global']


def test_the_predictor_and_eval_py_take_local_stats(tiny):
  """`hinet_jax.Predictor(..., local_stats=w)` restores with the windowed norm (`eval.py
  --local_stats` builds the same model)."""
  import hinet_jax  # pylint: disable=g-import-not-at-top
  model, params = tiny
  image = np.asarray(_image(24, 40)[0])
  local = models.with_local_stats(model, 16)
  want = np.asarray(jax.jit(local.apply)({'params': params}, image[None])[1][0])
  got = hinet_jax.Predictor(model, params, backend='xla', local_stats=16)(image)
  assert _rel(got, want) < 1e-5
  assert _rel(hinet_jax.Predictor(model, params, backend='xla')(image), want) > 1e-3
