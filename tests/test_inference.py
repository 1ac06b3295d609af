"""Tests for hinet_jax.evaluation.inference and the Predictor: the official grid, tiling ==
whole-image inference, one trace, bounded calls in flight, variables prepared once per parameter
set, the predictor holding prepared weights alone, and the README's example as written."""

import dataclasses
import gc
import math
import os
import pathlib
import re
import tempfile
import tracemalloc
import weakref

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import hinet_jax
from hinet_jax import backends
from hinet_jax import models
from hinet_jax.evaluation import inference
from hinet_jax.models import pretrained
import data_fixtures


class TwoConvs(nn.Module):
  """A local model: two 3x3 convs (receptive radius 2) with a residual, zero 'SAME' padding."""

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(4, (3, 3), padding='SAME')(x)
    y = nn.Conv(3, (3, 3), padding='SAME')(jnp.tanh(y))
    return x[..., :3] + y


def _two_convs():
  model = TwoConvs()
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  return model, params


class Biased(nn.Module):
  """x + 2 * bias, read from the 'prepared' twin of `bias` when it is given."""

  @nn.compact
  def __call__(self, x):
    bias = self.param('bias', nn.initializers.normal(1.0), (x.shape[-1],))
    if self.has_variable('prepared', 'bias'):
      return x + self.get_variable('prepared', 'bias')
    return x + 2 * bias


def _prepare_biased(model, params, low_memory=False):
  del model, low_memory
  return {'prepared': {'bias': 2 * params['bias']}}


def _fake_backend(**changes):
  """XLA's backend on this platform with `changes` (e.g. a `prepare_inference`)."""
  return dataclasses.replace(backends.resolve('xla'), name='test', **changes)


def _image(h, w, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (h, w, 3)).astype(np.float32)


def _official_grid(h, w, crop):
  """HINet `grids()` (image_restoration_model.py:123) transcribed loop for loop."""
  num_row, num_col = (h - 1) // crop + 1, (w - 1) // crop + 1
  step_j = crop if num_col == 1 else math.ceil((w - crop) / (num_col - 1) - 1e-8)
  step_i = crop if num_row == 1 else math.ceil((h - crop) / (num_row - 1) - 1e-8)
  out, i, last_i = [], 0, False
  while i < h and not last_i:
    j = 0
    if i + crop >= h:
      i, last_i = h - crop, True
    last_j = False
    while j < w and not last_j:
      if j + crop >= w:
        j, last_j = w - crop, True
      out.append((i, j))
      j += step_j
    i += step_i
  return out


class GridTest(parameterized.TestCase):

  def test_1280x720_crop_256_by_hand(self):
    # 720 rows: num_row = 719 // 256 + 1 = 3, step_i = ceil((720 - 256) / 2) = 232 -> 0, 232, 464
    # (464 + 256 = 720 >= 720 is the last row). 1280 cols: num_col = 5, step_j = ceil(1024 / 4)
    # = 256 -> 0, 256, 512, 768, 1024 (the last, flush with the right edge).
    expected = [(i, j) for i in (0, 232, 464) for j in (0, 256, 512, 768, 1024)]
    self.assertEqual(inference.grid_coords(720, 1280, 256), expected)

  @parameterized.parameters((720, 1280, 256), (256, 256, 256), (257, 300, 256), (481, 321, 256),
                            (1000, 700, 128), (33, 17, 16))
  def test_matches_the_official_loop(self, h, w, crop):
    self.assertEqual(inference.grid_coords(h, w, crop), _official_grid(h, w, crop))

  @parameterized.parameters((37, 53, 16, 4), (100, 16, 16, 6), (64, 64, 16, 8), (17, 91, 16, 15))
  def test_overlap_is_at_least_requested_and_covers(self, h, w, tile, overlap):
    coords = inference.tile_coords(h, w, tile, overlap)
    for axis, size in ((0, h), (1, w)):
      starts = sorted({c[axis] for c in coords})
      self.assertEqual(starts[0], 0)
      self.assertEqual(starts[-1] + tile, size)
      for a, b in zip(starts, starts[1:]):
        self.assertGreaterEqual(a + tile - b, overlap)

  def test_merge_average_of_constant_tiles(self):
    coords = inference.tile_coords(20, 30, 16, 4)
    tiles = np.stack([np.full((16, 16, 3), k, np.float32) for k in range(len(coords))])
    out = inference.merge_tiles(tiles, coords, (20, 30))
    self.assertEqual(out.shape, (20, 30, 3))
    self.assertEqual(out[0, 0, 0], 0.0)  # Covered by tile 0 only.
    self.assertEqual(out[-1, -1, 0], len(coords) - 1)

  def test_merge_row_by_row_equals_summing_the_whole_image(self):
    """The merger writes rows as soon as no later tile reaches them; the result is the weighted
    mean of every tile, summed over the whole image at once."""
    h, w, tile, overlap, margin = 50, 37, 16, 6, 2
    coords = inference.tile_coords(h, w, tile, overlap)
    tiles = np.random.default_rng(0).random((len(coords), tile, tile, 2), np.float32)
    acc, weight = np.zeros((h, w, 2), np.float32), np.zeros((h, w), np.float32)
    base = inference.blend_window(tile, tile, 'smooth')
    for t, (i, j) in zip(tiles, coords):
      wgt = base.copy()
      wgt[:margin] *= i == 0  # Edges facing another tile are dropped.
      wgt[tile - margin:] *= i + tile == h
      wgt[:, :margin] *= j == 0
      wgt[:, tile - margin:] *= j + tile == w
      acc[i:i + tile, j:j + tile] += t * wgt[..., None]
      weight[i:i + tile, j:j + tile] += wgt
    out = inference.merge_tiles(tiles, coords, (h, w), blend='smooth', margin=margin)
    np.testing.assert_allclose(out, acc / weight[..., None], rtol=1e-6)
    merger = inference.TileMerger((40, 16), (16, 16))
    merger.add(tiles[0], 0, 0)
    merger.add(tiles[1], 16, 0)  # Rows 0-15 are written here.
    with self.assertRaisesRegex(ValueError, 'row by row'):
      merger.add(tiles[2], 8, 0)

  def test_rounded_restore_holds_no_float_copy_of_the_image(self):
    """With `bits`, the output is rounded as it is merged: a 1024x1024 uint8 photo restores in
    less extra memory than one float32 copy of it (12 MB)."""
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), np.uint8)
    identity = lambda params, x: x
    tracemalloc.start()
    try:
      out = inference.restore_image(identity, None, image, tile=64, overlap=8, bits=8)
      peak = tracemalloc.get_traced_memory()[1]
    finally:
      tracemalloc.stop()
    np.testing.assert_array_equal(out, image)
    self.assertLess(peak, 8e6)
    with self.assertRaisesRegex(ValueError, 'bits must be None, 8 or 16'):
      inference.restore_image(identity, None, image[:8, :8], bits=12)

  def test_too_large_margin_raises(self):
    coords = inference.tile_coords(20, 20, 16, 4)
    with self.assertRaisesRegex(ValueError, 'margin'):
      inference.merge_tiles(np.ones((len(coords), 16, 16, 3)), coords, (20, 20), margin=7)


class RestoreTest(parameterized.TestCase):

  @parameterized.parameters(
      dict(h=37, w=53, tile=16, overlap=4, blend='average'),
      dict(h=37, w=53, tile=16, overlap=6, blend='smooth'),
      dict(h=16, w=61, tile=16, overlap=8, blend='average'),
      dict(h=45, w=20, tile=20, overlap=4, blend='smooth'))
  def test_tiled_equals_whole_for_a_local_model(self, h, w, tile, overlap, blend):
    model, params = _two_convs()
    predict = inference.Forward(model)
    x = _image(h, w)
    whole = inference.restore_image(predict, params, x)
    tiled = inference.restore_image(predict, params, x, tile=tile, overlap=overlap, margin=2,
                                    batch_size=3, blend=blend)
    self.assertEqual(tiled.shape, (h, w, 3))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)

  def test_local_model_without_margin_differs(self):
    # The check above is not vacuous: averaging tile edges (the official rule) changes pixels.
    model, params = _two_convs()
    predict = inference.Forward(model)
    x = _image(37, 53)
    whole = inference.restore_image(predict, params, x)
    tiled = inference.restore_image(predict, params, x, tile=16, overlap=4, margin=0)
    self.assertGreater(np.abs(tiled - whole).max(), 1e-3)

  @parameterized.parameters((5, 7), (16, 16), (23, 9), (40, 33), (1, 30))
  def test_identity_any_size_and_self_ensemble(self, h, w):
    predict = jax.jit(lambda p, x: x)
    x = _image(h, w, 1)
    for kw in (dict(), dict(tile=16, overlap=4), dict(tile=16, blend='smooth'),
               dict(tile=16, overlap=2, self_ensemble=True), dict(self_ensemble=True)):
      out = inference.restore_image(predict, None, x, **kw)
      np.testing.assert_allclose(out, x, atol=1e-6, err_msg=str(kw))

  def test_one_trace_for_all_tiles_and_images(self):
    model, params = _two_convs()
    traces = []

    def predict(p, x):
      traces.append(x.shape)
      return model.apply({'params': p}, x)

    predict = jax.jit(predict)
    for h, w in ((37, 53), (70, 20), (9, 9), (16, 48)):
      inference.restore_image(predict, params, _image(h, w), tile=16, overlap=4, batch_size=4,
                              self_ensemble=(h == 9))
    self.assertEqual(traces, [(4, 16, 16, 3)])

  @parameterized.parameters(1, 2, 3)
  def test_batches_in_flight_are_bounded(self, in_flight):
    """At most `in_flight` calls are dispatched and not yet fetched when the next is dispatched
    (XLA:CPU would run them side by side, each with its own temporaries), in order."""
    unfetched, most = [0], [0]

    class Result:

      def __init__(self, x):
        self.x = x

      def __array__(self, dtype=None, copy=None):
        unfetched[0] -= 1
        return np.asarray(self.x, dtype)

    def predict(p, x):
      del p
      most[0] = max(most[0], unfetched[0])
      unfetched[0] += 1
      return Result(x + 1.0)

    images = np.arange(7 * 2 * 2 * 3, dtype=np.float32).reshape(7, 2, 2, 3)
    out = inference.predict_batched(predict, None, images, batch_size=2, in_flight=in_flight)
    np.testing.assert_array_equal(out, images + 1.0)
    self.assertEqual(most[0], in_flight - 1)
    self.assertEqual(unfetched[0], 0)

  def test_predict_fn_prepares_the_variables_once_per_parameter_set(self):
    model = Biased()
    params = {'bias': jnp.asarray([0.1, 0.2, 0.3], jnp.float32)}
    predict = inference.Forward(model, _fake_backend(prepare_inference=_prepare_biased))
    cache = predict.prepared_variables
    x = _image(4, 5)[None]
    first = np.asarray(predict(params, x))
    np.testing.assert_allclose(first, x + 2 * np.asarray(params['bias']), rtol=1e-6)
    np.testing.assert_array_equal(predict(params, x), first)
    self.assertEqual(cache.prepares, 1)
    # New weights (other arrays) are prepared anew and give their own output.
    other = jax.tree.map(lambda a: a * 1.5, params)
    self.assertGreater(np.abs(np.asarray(predict(other, x)) - first).max(), 1e-3)
    self.assertEqual(cache.prepares, 2)
    # Mutable (numpy) weights are never trusted to be unchanged: prepared on every call.
    host = jax.tree.map(np.array, params)
    before = np.asarray(predict(host, x))
    host['bias'] *= 2  # in place: the same objects, other weights
    self.assertGreater(np.abs(np.asarray(predict(host, x)) - before).max(), 1e-3)
    self.assertEqual(cache.prepares, 4)
    # The prepared variables live no longer than the weights they were prepared from.
    self.assertTrue(cache.holds_variables)
    del other
    gc.collect()
    self.assertFalse(cache.holds_variables)

  def test_predict_fn_follows_its_backend(self):
    predict = inference.Forward(_two_convs()[0], _fake_backend(calls_in_flight=3))
    self.assertEqual(inference.calls_in_flight(predict), 3)
    self.assertIsNone(predict.prepared_variables)  # XLA's backend prepares nothing.
    self.assertEqual(inference.calls_in_flight(jax.jit(lambda p, x: x)),
                     backends.resolve('xla').calls_in_flight)

  def test_hinet_predict_fn_returns_stage2(self):
    model = models.HINet(wf=8, depth=3)
    params = data_fixtures.random_params(model, std=0.1)
    x = _image(20, 12)
    predict = inference.Forward(model)
    self.assertEqual(predict.backend, backends.resolve('auto'))
    out = np.asarray(predict(params, x[None]))
    ref = np.asarray(jax.jit(model.apply)({'params': params}, x[None])[1])
    np.testing.assert_allclose(out, ref, atol=1e-5)


def _tiny_hinet():
  model = models.HINet(wf=8, depth=2)
  return model, data_fixtures.random_params(model, std=0.1)


class PredictorTest(absltest.TestCase):

  def test_restores_as_the_model_whole_tiled_and_self_ensembled(self):
    model, params = _tiny_hinet()
    x = _image(20, 36)
    want = np.asarray(jax.jit(model.apply)({'params': params}, x[None])[1][0])
    np.testing.assert_allclose(hinet_jax.Predictor(model, params)(x), want, atol=1e-5)
    forward = inference.Forward(model)
    for options in (dict(tile=16, overlap=4), dict(self_ensemble=True)):
      got = hinet_jax.Predictor(model, params, **options)(np.round(x * 255).astype(np.uint8))
      ref = inference.restore_image(forward, params, np.round(x * 255) / 255, **options)
      np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=str(options))

  def test_holds_the_prepared_weights_alone(self):
    """A parameter with a prepared twin is held as its shape; the caller's arrays are freed."""
    backend = _fake_backend(prepare_inference=_prepare_biased)
    params = {'bias': jnp.asarray([0.1, 0.2, 0.3], jnp.float32)}
    expected = _image(4, 5) + 2 * np.asarray(params['bias'])
    alive = weakref.ref(params['bias'])
    predictor = hinet_jax.Predictor(Biased(), params, backend=backend)
    del params
    gc.collect()
    self.assertIsNone(alive())
    self.assertEqual(predictor.variables['params']['bias'], backends.Shape((3,), 'float32'))
    np.testing.assert_allclose(predictor(_image(4, 5)), expected, rtol=1e-6)


class ReadmeTest(absltest.TestCase):

  def test_the_first_python_example_runs_as_written(self):
    """The README's first Python block, verbatim, on a tiny checkpoint at its path."""
    readme = (pathlib.Path(__file__).resolve().parent.parent / 'README.md').read_text()
    code = re.findall(r'```python\n(.*?)```', readme, flags=re.S)[0]
    self.assertIn('hinet_jax.Predictor', code)
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
      os.chdir(tmp)
      try:
        model, params = _tiny_hinet()
        pretrained.save_params('ckpt/sidd-1x', params, models.model_config(model))
        scope = {}
        exec(compile(code, 'README.md', 'exec'), scope)  # pylint: disable=exec-used
      finally:
        os.chdir(here)
    self.assertEqual(scope['restored'].shape, scope['noisy'].shape)


class PrecisionTest(absltest.TestCase):
  """Convolutions are traced at the requested precision (float32 'highest' by default)."""

  def test_convolutions_follow_the_precision_argument(self):
    model, params = _two_convs()
    x = np.zeros((1, 8, 8, 3), np.float32)
    counts = {}
    for precision in ('highest', 'default'):
      predict = inference.Forward(model, 'xla', precision=precision)
      self.assertEqual(predict.precision, precision)
      jaxpr = str(jax.make_jaxpr(predict.apply)({'params': params}, x))
      counts[precision] = (jaxpr.count('conv_general_dilated'), jaxpr.count('HIGHEST'))
    self.assertEqual(inference.Forward(model, 'xla').precision, 'highest')
    self.assertGreater(counts['highest'][0], 0)
    # A conv's precision prints once per operand: precision=(HIGHEST, HIGHEST).
    self.assertEqual(counts['highest'][1], 2 * counts['highest'][0])
    self.assertEqual(counts['default'][1], 0)

  def test_unknown_precision_is_refused(self):
    with self.assertRaisesRegex(ValueError, "precision 'fast'.*highest"):
      inference.Forward(TwoConvs(), 'xla', precision='fast')


if __name__ == '__main__':
  absltest.main()
