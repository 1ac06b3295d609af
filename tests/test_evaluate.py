"""Tests for hinet_jax.evaluation.protocols and eval.py: each protocol end to end on small
real-format files."""

import csv
import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.io

from hinet_jax.cli import eval as eval_script
from hinet_jax import backends
from hinet_jax.data import layouts
from hinet_jax.data import sidd_mat
from hinet_jax.data import test_sets
from hinet_jax.evaluation import engine
from hinet_jax.evaluation import protocols as evaluate
from hinet_jax.data import image_ops
from hinet_jax.evaluation import inference
from hinet_jax import models
from hinet_jax.evaluation import metrics
from hinet_jax.models import pretrained
import data_fixtures
import launch


def _pair(h, w, seed, noise=20, dtype=np.uint8):
  """A clean image and a noisy copy, uint8 (or uint16 scaled)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  gt = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                 ((xx + yy) * 7) % 256], -1).astype(np.float64)
  lq = np.clip(gt + rng.normal(0, noise, gt.shape), 0, 255)
  if dtype == np.uint16:
    return np.round(lq * 257).astype(np.uint16), np.round(gt * 257).astype(np.uint16)
  return np.round(lq).astype(np.uint8), np.round(gt).astype(np.uint8)


def _write_folder(root, sizes, seed=0):
  """<root>/input and <root>/target PNG pairs; returns {name: (lq, gt)}."""
  pairs = {}
  for k, (h, w) in enumerate(sizes):
    lq, gt = _pair(h, w, seed + k)
    name = f'img{k:02d}'
    image_ops.write_image(os.path.join(root, 'input', name + '.png'), lq)
    image_ops.write_image(os.path.join(root, 'target', name + '.png'), gt)
    pairs[name] = (lq, gt)
  return pairs


def _np_psnr(x, y):
  return 10 * np.log10(1.0 / np.mean((x.astype(np.float64) - y.astype(np.float64))**2))


def _y(x):
  return (16 + x.astype(np.float64) @ np.array([65.481, 128.553, 24.966])) / 255


class _Biased(nn.Module):
  """x + 2 * bias; `2 * bias` from the 'prepared' collection (it fails without it)."""

  @nn.compact
  def __call__(self, x):
    self.param('bias', nn.initializers.zeros, (x.shape[-1],))
    return x + self.get_variable('prepared', 'double')


_IDENTITY = jax.jit(lambda p, x: x)
_HALF_WAY = jax.jit(lambda p, x: x * 0.5 + 0.25)
_MIXING = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32) / 16


@jax.jit
def _slow_copy(image):
  """`image` (a new array), after ~40 ms (2 cores) of matrix products that depend on it."""
  z = jnp.full((256, 256), jnp.mean(image))
  for _ in range(60):
    z = jnp.tanh(z @ _MIXING)
  return image + 0 * z[0, 0]


def _batches_of_slow_images(images, in_flight, unfinished):
  """Batches of `_slow_copy(image)`; before yielding batch j, appends to `unfinished` how many of
  batches 0 .. j - 1 - in_flight (those a loop bounded to `in_flight` has waited for) are not
  done."""
  made = []
  for image in images:
    settled = made[:max(0, len(made) - in_flight)]
    unfinished.append(sum(not a.is_ready() for a in settled))
    made.append(_slow_copy(image))
    yield {'lq': made[-1], 'gt': jnp.asarray(image)}


class EvaluateBatchesTest(absltest.TestCase):

  def test_masked_padding_gives_the_unpadded_mean_and_one_compile(self):
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 1, (5, 16, 16, 3)).astype(np.float32)
    lq = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
    traces = []

    def predict(p, x):
      traces.append(x.shape)
      return x * p

    predict = jax.jit(predict)
    batches = [
        {'lq': lq[:3], 'gt': gt[:3], 'mask': np.ones(3, np.float32), 'name': ['a', 'b', 'c']},
        # The last batch is padded with an image identical to its target (PSNR inf, mask 0).
        {'lq': np.concatenate([lq[3:], gt[:1]]), 'gt': np.concatenate([gt[3:], gt[:1]]),
         'mask': np.array([1, 1, 0], np.float32), 'name': ['d', 'e', '']}]
    rows = []
    for _ in range(2):  # The second evaluation reuses the compiled step.
      summary = engine.evaluate_batches(predict, np.float32(1.0), batches, rows=rows)
    self.assertLen(traces, 1)
    expected = np.mean([_np_psnr(lq[i], gt[i]) for i in range(5)])
    self.assertEqual(summary['num_images'], 5)
    self.assertAlmostEqual(summary['psnr'], expected, places=3)
    self.assertAlmostEqual(summary['input_psnr'], expected, places=3)
    self.assertEqual([r['name'] for r in rows[:5]], ['a', 'b', 'c', 'd', 'e'])

  def test_batches_in_flight_are_bounded(self):
    """A batch is dispatched only once all but `in_flight - 1` earlier ones are done: XLA:CPU
    would run them side by side, each with its own temporaries. By default the predict
    function's backend decides (on CPU one). Seen from the batches' side: each batch's images
    come from a computation of their own, slow next to the loop (`_slow_copy`), so when the loop
    reads batch j every batch before j - in_flight must be done, its images with it
    (`jax.Array.is_ready`); a loop that does not wait finds some still running."""
    rng = np.random.default_rng(2)
    images = [rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32) for _ in range(6)]
    self.assertEqual(inference.calls_in_flight(_IDENTITY), 1)  # The tests run on CPU.
    for in_flight in (None, 1, 2, 3):
      unfinished = []
      batches = _batches_of_slow_images(images, in_flight or 1, unfinished)
      summary = engine.evaluate_batches(_IDENTITY, None, batches, in_flight=in_flight)
      self.assertEqual(summary['num_images'], 12)
      self.assertEqual(unfinished, [0] * len(images), in_flight)

  def test_predict_fn_runs_as_made_prepared_once(self):
    """A `inference.Forward` predict runs in the eval step with its backend's prepared variables,
    prepared once for all batches and evaluations."""
    backend = dataclasses.replace(
        backends.resolve('xla'),
        prepare_inference=lambda model, p, low_memory: {'prepared': {'double': 2 * p['bias']}})
    predict = inference.Forward(_Biased(), backend)
    params = {'bias': jnp.asarray([0.01, -0.02, 0.03], jnp.float32)}
    rng = np.random.default_rng(3)
    batches = [{'lq': rng.uniform(0, 1, (2, 12, 12, 3)).astype(np.float32),
                'gt': rng.uniform(0, 1, (2, 12, 12, 3)).astype(np.float32)} for _ in range(3)]
    plain = jax.jit(lambda p, x: x + 2 * p['bias'])
    want = engine.evaluate_batches(plain, params, batches)
    for _ in range(2):
      got = engine.evaluate_batches(predict, params, batches)
      self.assertAlmostEqual(got['psnr'], want['psnr'], places=4)
    self.assertEqual(predict.prepared_variables.prepares, 1)

  def test_self_ensemble_of_identity_is_identity(self):
    gt = np.random.default_rng(1).uniform(0, 1, (2, 16, 12, 3)).astype(np.float32)
    lq = gt * 0.9
    plain = engine.evaluate_batches(_IDENTITY, None, [{'lq': lq, 'gt': gt}])
    ens = engine.evaluate_batches(_IDENTITY, None, [{'lq': lq, 'gt': gt}], self_ensemble=True)
    self.assertAlmostEqual(plain['psnr'], ens['psnr'], places=4)

  def test_padded_batches_are_refused(self):
    x = np.zeros((1, 16, 16, 3), np.float32)
    with self.assertRaisesRegex(ValueError, 'padded'):
      engine.evaluate_batches(_IDENTITY, None,
                                [{'lq': x, 'gt': x, 'mask': np.ones(1), 'hw': [[12, 16]]}])


class ProtocolTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    flags.FLAGS.mark_as_parsed()  # create_tempdir reads --test_tmpdir; pytest parses no flags.

  def test_sidd_val_from_mat_files_float_output(self):
    d = self.create_tempdir().full_path
    lq, gt = _pair(2 * 2 * 24, 24, 0)
    noisy = lq.reshape(2, 2, 24, 24, 3)
    clean = gt.reshape(2, 2, 24, 24, 3)
    scipy.io.savemat(os.path.join(d, test_sets.SIDD_VAL_FILES[0]),
                     {sidd_mat.SIDD_VAL_KEYS['noisy']: noisy})
    scipy.io.savemat(os.path.join(d, test_sets.SIDD_VAL_FILES[1]),
                     {sidd_mat.SIDD_VAL_KEYS['gt']: clean})
    rows = []
    summary = evaluate.evaluate_protocol(_HALF_WAY, None, 'sidd_val', d, batch_size=3, rows=rows)
    self.assertEqual(summary['num_images'], 4)
    self.assertLen(rows, 4)
    # Float output (no rounding): the half-way images are not on the 8-bit grid.
    pred = noisy.reshape(4, 24, 24, 3) / 255 * 0.5 + 0.25
    expected = np.mean([_np_psnr(pred[i], clean.reshape(4, 24, 24, 3)[i] / 255)
                        for i in range(4)])
    self.assertAlmostEqual(summary['psnr'], expected, places=3)
    self.assertEqual(summary['settings']['quantize'], False)
    self.assertEqual(rows[1]['name'], '0000_01')

  def test_gopro_and_reds_full_frames_rounded_rgb(self):
    gopro = self.create_tempdir().full_path
    pairs = _write_folder(os.path.join(gopro, 'test'), [(40, 52), (30, 30)])
    reds = self.create_tempdir().full_path
    for seq in ('000', '001'):
      for frame in (8, 9, 19):
        lq, gt = _pair(20, 28, int(seq) * 100 + frame)
        name = f'{frame:08d}.png'
        image_ops.write_image(os.path.join(reds, 'val', 'val_blur_jpeg', seq, name), lq)
        image_ops.write_image(os.path.join(reds, 'val', 'val_sharp', seq, name), gt)
    summary = evaluate.evaluate_protocol(_HALF_WAY, None, 'gopro', gopro, tile=16)
    expected = np.mean([
        _np_psnr(np.round((lq / 255 * 0.5 + 0.25) * 255) / 255, gt / 255)
        for lq, gt in pairs.values()])
    self.assertAlmostEqual(summary['psnr'], expected, places=3)
    self.assertTrue(summary['settings']['quantize'])
    default = evaluate.evaluate_protocol(_IDENTITY, None, 'gopro', gopro)
    self.assertEqual(default['settings']['tile'], 256)
    rows = []
    summary = evaluate.evaluate_protocol(_IDENTITY, None, 'reds', reds, rows=rows)
    self.assertEqual(summary['num_images'], 4)  # Frames ending in 9 only (val_300 rule).
    self.assertEqual([r['name'] for r in rows], ['000_00000009', '000_00000019', '001_00000009',
                                                 '001_00000019'])
    self.assertAlmostEqual(summary['psnr'], summary['input_psnr'], places=4)

  def test_rain13k_five_sets_y_channel_and_average(self):
    root = self.create_tempdir().full_path
    per_set = []
    for k, name in enumerate(layouts.RAIN13K_TEST_SETS):
      pairs = _write_folder(os.path.join(root, 'test', name), [(24, 20 + k)], seed=10 * k)
      per_set.append(np.mean([_np_psnr(_y(lq / 255), _y(gt / 255)) for lq, gt in pairs.values()]))
    summary = evaluate.evaluate_protocol(_IDENTITY, None, 'rain13k', root)
    self.assertEqual(sorted(summary['subsets']), sorted(layouts.RAIN13K_TEST_SETS))
    self.assertEqual(summary['num_images'], 5)
    for name, value in zip(layouts.RAIN13K_TEST_SETS, per_set):
      self.assertAlmostEqual(summary['subsets'][name]['input_psnr'], value, places=3)
    self.assertAlmostEqual(summary['psnr'], np.mean(per_set), places=3)
    self.assertIn('average', eval_script.format_table(summary))
    only = evaluate.evaluate_protocol(_IDENTITY, None, 'rain13k', root, subsets=['Rain100H'])
    self.assertEqual(list(only['subsets']), ['Rain100H'])


def _sidd_overshoot_dir(d):
  """SIDD .mat blocks (2x3 of 24x24) whose noisy block 4 alone reaches 255: scaled by 1.5 (see
  _TIMES_1_5) only it overshoots 1.0."""
  rng = np.random.default_rng(5)
  noisy = rng.integers(0, 160, (2, 3, 24, 24, 3), dtype=np.uint8)
  noisy[1, 1, 7, 9, 2] = 255
  clean = np.clip(noisy.astype(np.int32) * 3 // 2 + rng.integers(-9, 9, noisy.shape), 0,
                  255).astype(np.uint8)
  scipy.io.savemat(os.path.join(d, test_sets.SIDD_VAL_FILES[0]),
                   {sidd_mat.SIDD_VAL_KEYS['noisy']: noisy})
  scipy.io.savemat(os.path.join(d, test_sets.SIDD_VAL_FILES[1]),
                   {sidd_mat.SIDD_VAL_KEYS['gt']: clean})
  return noisy.reshape(6, 24, 24, 3), clean.reshape(6, 24, 24, 3)


_TIMES_1_5 = jax.jit(lambda p, x: x * 1.5)


class OfficialMetricsTest(absltest.TestCase):
  """Every protocol reports the official-convention metrics beside the project's."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    flags.FLAGS.mark_as_parsed()

  def test_sidd_val_counts_the_overshooting_block(self):
    d = self.create_tempdir().full_path
    noisy, clean = _sidd_overshoot_dir(d)
    rows = []
    summary = evaluate.evaluate_protocol(_TIMES_1_5, None, 'sidd_val', d, batch_size=4, rows=rows)
    self.assertEqual(summary['official_peak_flips'], 1)
    self.assertEqual([r['official_peak_flips'] for r in rows], [0, 0, 0, 0, 1, 0])
    pred = noisy.astype(np.float32) / 255 * 1.5
    gt = clean.astype(np.float32) / 255
    official = [metrics.psnr_as_official(pred[i], gt[i]) for i in range(6)]
    self.assertAlmostEqual(summary['psnr_official'], np.mean(official), places=3)
    self.assertAlmostEqual(summary['ssim_official'],
                           np.mean([metrics.ssim_as_official(pred[i], gt[i]) for i in range(6)]),
                           places=5)
    # The flipped block scores about 20 log10(255) = 48 dB over the fixed-peak PSNR.
    self.assertAlmostEqual(rows[4]['psnr_official'] - rows[4]['psnr'], 20 * np.log10(255),
                           places=3)
    self.assertAlmostEqual(rows[0]['psnr_official'], rows[0]['psnr'], places=3)

  def test_8bit_and_y_protocols_report_official_metrics(self):
    root = self.create_tempdir().full_path
    pairs = {}
    for k, name in enumerate(layouts.RAIN13K_TEST_SETS[:2]):
      pairs[name] = _write_folder(os.path.join(root, 'test', name), [(24, 20 + k)], seed=10 * k)
    summary = evaluate.evaluate_protocol(_HALF_WAY, None, 'rain13k', root,
                                         subsets=list(pairs), tile=16)
    for name, set_pairs in pairs.items():
      (lq, gt), = set_pairs.values()
      out8 = np.round((lq / 255 * 0.5 + 0.25) * 255).astype(np.uint8)
      sub = summary['subsets'][name]
      self.assertAlmostEqual(sub['psnr_official'],
                             metrics.psnr_as_official(out8, gt, y_channel=True), places=3)
      self.assertAlmostEqual(sub['ssim_official'],
                             metrics.ssim_as_official(out8, gt, y_channel=True), places=5)
      self.assertEqual(sub['official_peak_flips'], 0)
    self.assertIn('PSNR*', eval_script.format_table(summary))


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _split_source(n=7):
  """n (lq, gt) 16x16 uint8 pairs: a source for the split tests (odd n: uneven shares)."""
  rng = np.random.default_rng(11)
  return data_fixtures.ArraySource(
      {'lq': rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
       'gt': rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), 'name': f'{i:02d}'}
      for i in range(n))


# One process of the 2-process split test: 4 CPU devices each, the same source and predict
# function as `_split_source` / `_TIMES_1_5`; prints both protocols' summaries and the names of
# the images it scored as JSON.
_WORKER = textwrap.dedent('''
    import json, sys
    import jax
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]))
    sys.path.insert(0, sys.argv[3])
    import test_evaluate as t
    from hinet_jax.evaluation import engine, protocols
    source, out = t._split_source(), {}
    for name, batched in (('batched', True), ('pairs', False)):
      protocol = protocols.Protocol(name, engine.MetricConfig(), batched=batched)
      rows = []
      out[name] = engine.evaluate_source(t._TIMES_1_5, None, source, protocol, batch_size=4,
                                         rows=rows)
      out[name]['scored'] = [r['name'] for r in rows]
    print('RESULT ' + json.dumps(out))
    ''')


class SplitEvaluationTest(absltest.TestCase):
  """Validation split over devices and processes gives the single-device figures."""

  def test_batches_split_over_local_devices(self):
    source = _split_source()
    protocol = evaluate.Protocol('x', engine.MetricConfig(), batched=True)
    self.assertEqual(jax.local_device_count(), 8)
    split = engine.evaluate_source(_TIMES_1_5, None, source, protocol, batch_size=8)
    whole = engine.evaluate_source(_TIMES_1_5, None, source, protocol, batch_size=3)
    self.assertEqual(split['num_images'], 7)
    for key in engine.ROW_KEYS:
      self.assertAlmostEqual(split[key], whole[key], places=4, msg=key)

  def test_two_processes_match_one(self):
    source = _split_source()
    want = {}
    for name, batched in (('batched', True), ('pairs', False)):
      protocol = evaluate.Protocol(name, engine.MetricConfig(), batched=batched)
      want[name] = engine.evaluate_source(_TIMES_1_5, None, source, protocol, batch_size=4)
    env = launch.program_env(4)
    address = f'localhost:{_free_port()}'
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [subprocess.Popen([sys.executable, '-c', _WORKER, address, str(i), here], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for i, proc in enumerate(procs):
      out, err = proc.communicate(timeout=240)
      self.assertEqual(proc.returncode, 0, f'process {i}:\n{err[-3000:]}')
      got = json.loads(out.split('RESULT ', 1)[1])
      for name in want:
        self.assertEqual(got[name]['scored'], [f'{k:02d}' for k in range(i, 7, 2)])
        self.assertEqual(got[name]['num_images'], 7)
        for key in engine.ROW_KEYS:
          self.assertAlmostEqual(got[name][key], want[name][key], places=4, msg=(i, name, key))


class EvalScriptTest(absltest.TestCase):
  """eval.py end to end with a tiny HINet saved as a converted checkpoint."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    flags.FLAGS.mark_as_parsed()
    model = models.HINet(wf=8, depth=3)
    params = data_fixtures.random_params(model)
    cls.ckpt = os.path.join(absltest.get_default_test_tmpdir(), 'tiny_ckpt')
    pretrained.save_params(cls.ckpt, params, models.model_config(model), overwrite=True)
    cls.model, cls.params = model, params

  def test_folder_protocol_writes_json_csv_and_images(self):
    data = self.create_tempdir().full_path
    _write_folder(data, [(20, 24), (17, 33)])
    out = self.create_tempdir().full_path
    metrics_json = os.path.join(out, 'm.json')
    with flagsaver.flagsaver(checkpoint=self.ckpt, protocol='folder', data_dir=data,
                             metrics_json=metrics_json, save_images=os.path.join(out, 'img'),
                             tile=16, tile_overlap=4):
      eval_script.main(['eval.py'])
    summary = json.load(open(metrics_json))
    for key in ('psnr', 'ssim', 'input_psnr', 'input_ssim', 'num_images', 'psnr_official',
                'ssim_official', 'official_peak_flips'):
      self.assertIn(key, summary)
    self.assertEqual(summary['num_images'], 2)
    self.assertEqual(summary['settings']['precision'], 'highest')
    with open(os.path.join(out, 'm_per_image.csv')) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([r['name'] for r in rows], ['img00', 'img01'])
    self.assertAlmostEqual(np.mean([float(r['psnr_official']) for r in rows]),
                           summary['psnr_official'], places=4)
    self.assertIn('official_peak_flips', rows[0])
    saved = image_ops.read_image(os.path.join(out, 'img', 'img01.png'))
    self.assertEqual(saved.shape, (17, 33, 3))
    # The saved image is the tiled prediction, rounded.
    x = image_ops.to_float32(image_ops.read_image(os.path.join(data, 'input', 'img01.png')))
    ref = inference.restore_image(inference.Forward(self.model), self.params, x, tile=16,
                                  overlap=4)
    np.testing.assert_array_equal(saved, np.round(np.clip(ref, 0, 1) * 255).astype(np.uint8))

  def test_restore_mode(self):
    src = self.create_tempdir().full_path
    lq8, _ = _pair(21, 30, 1)
    lq16, _ = _pair(18, 18, 2, dtype=np.uint16)
    image_ops.write_image(os.path.join(src, 'a.png'), lq8)
    image_ops.write_image(os.path.join(src, 'b.png'), lq16)
    with open(os.path.join(src, 'notes.txt'), 'w') as f:
      f.write('not an image')
    out = self.create_tempdir().full_path
    flags_kw = dict(checkpoint=self.ckpt, input=src, output=out, tile=16, tile_overlap=4)
    with flagsaver.flagsaver(panels=True, **flags_kw):
      with self.assertLogs(level='WARNING') as logs:
        eval_script.main(['eval.py'])
    self.assertTrue(any('notes.txt' in m for m in logs.output))
    a, b = (image_ops.read_image(os.path.join(out, n)) for n in ('a.png', 'b.png'))
    self.assertEqual((a.dtype, a.shape), (np.uint8, (21, 30, 3)))
    self.assertEqual((b.dtype, b.shape), (np.uint16, (18, 18, 3)))  # Bit depth kept.
    panel = image_ops.read_image(os.path.join(out, 'a_panel.png'))
    self.assertEqual(panel.shape, (21, 2 * 30 + eval_script.PANEL_GAP, 3))
    np.testing.assert_array_equal(panel[:, :30], lq8)
    # An existing output is kept unless --overwrite.
    image_ops.write_image(os.path.join(out, 'a.png'), np.zeros_like(lq8))
    with flagsaver.flagsaver(**flags_kw):
      eval_script.main(['eval.py'])
    self.assertEqual(image_ops.read_image(os.path.join(out, 'a.png')).max(), 0)
    with flagsaver.flagsaver(overwrite=True, **flags_kw):
      eval_script.main(['eval.py'])
    self.assertGreater(image_ops.read_image(os.path.join(out, 'a.png')).max(), 0)
    # An unreadable image fails, naming the file.
    with open(os.path.join(src, 'c.png'), 'wb') as f:
      f.write(b'\x89PNG broken')
    with flagsaver.flagsaver(**flags_kw):
      with self.assertRaisesRegex(image_ops.ImageReadError, 'c.png'):
        eval_script.main(['eval.py'])


if __name__ == '__main__':
  absltest.main()
