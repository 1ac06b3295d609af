r"""Local statistics at inference (TLC) on a trained model: quality and time, with and without.

  python bench/local_stats.py --workdir=/tmp/hinet_demo --crop=64 --json=/tmp/local_stats.json

Scores the demo's held-out photos (scikit-image, seeded Gaussian noise as the demo's val split):
the 16 validation tiles of 256 with the global half instance norm and with local statistics over
windows of 1x, 1.5x (TLC's default) and 2x the training crop, and the 4 whole photos with the
global norm and 1.5x; PSNR and SSIM on the 8-bit output (the demo's protocol). Then restores the
largest photo whole and in tiles (--tile, --overlaps) with either norm and reports the
difference from that norm's whole-image result. Times: medians of --reps warm forwards on the
backend 'auto' picks, global and local in turns.
"""

import json
import time

from absl import app
from absl import flags
import jax
import numpy as np

from hinet_jax import checkpoints
from hinet_jax import models
from hinet_jax.data import demo_set
from hinet_jax.evaluation import inference
from hinet_jax.evaluation import metrics

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training workdir or params-only checkpoint.')
_CROP = flags.DEFINE_integer('crop', 64, 'The training crop of that model.')
_SIGMA = flags.DEFINE_float('sigma', 25.0, 'Noise sigma (0-255) of the demo val split.')
_TILE = flags.DEFINE_integer('tile', 256, 'Tile side for the tiled-vs-whole check.')
_OVERLAPS = flags.DEFINE_list('overlaps', ['0', '32', '96'], 'Tile overlaps to check.')
_REPS = flags.DEFINE_integer('reps', 5, 'Timed forwards per case.')
_JSON = flags.DEFINE_string('json', None, 'Write the results here.')


def score(forward, params, pairs):
  """Mean PSNR/SSIM (8-bit output) and the median time of one image's forward."""
  psnrs, ssims = [], []
  for lq, gt in pairs:
    out = np.asarray(forward(params, lq[None]))[0]
    kw = dict(data_range=1.0, quantize=True)
    psnrs.append(float(metrics.psnr(out, gt, **kw)))
    ssims.append(float(metrics.ssim(out, gt, **kw)))
  return float(np.mean(psnrs)), float(np.mean(ssims))


def timed(forwards, params, x, reps):
  """Median seconds of one forward of `x` per forward, the forwards run in turns (so a change
  of load on a shared machine falls on all of them)."""
  for forward in forwards:
    jax.block_until_ready(forward(params, x))
  times = [[] for _ in forwards]
  for _ in range(reps):
    for forward, t in zip(forwards, times):
      start = time.perf_counter()
      jax.block_until_ready(forward(params, x))
      t.append(time.perf_counter() - start)
  return [float(np.median(t)) for t in times]


def whole_photos(sigma):
  """The demo's val photos whole, noise seeded by (0, 2, index): a draw no split makes."""
  out = []
  for i, name in enumerate(demo_set.DEMO_VAL_IMAGES):
    clean = demo_set.load_demo_image(name)
    lq = demo_set.degrade(clean, np.random.default_rng([0, 2, i]), 'noise', sigma)
    out.append((lq.astype(np.float32) / 255, clean.astype(np.float32) / 255))
  return out


def main(_):
  model_config, params = checkpoints.load(_WORKDIR.value)
  model = models.create_model(**model_config)
  tiles = [(item['lq'].astype(np.float32) / 255, item['gt'].astype(np.float32) / 255)
           for item in demo_set.DemoSource('val', sigma=_SIGMA.value)]
  photos = whole_photos(_SIGMA.value)
  windows = {'global': None}
  for factor in (1.0, 1.5, 2.0):
    windows[f'local_{factor}x'] = int(round(factor * _CROP.value))
  results = {'jax': jax.__version__, 'devices': str(jax.devices()), 'crop': _CROP.value}
  timed_forwards = []
  for label, window in windows.items():
    m = model if window is None else models.with_local_stats(model, window)
    forward = inference.Forward(m)
    row = {'window': window, 'backend': forward.backend.name}
    row['tiles256_psnr'], row['tiles256_ssim'] = score(forward, params, tiles)
    if label in ('global', 'local_1.5x'):  # whole photos compile once per size: two windows only
      row['photos_psnr'], row['photos_ssim'] = score(forward, params, photos)
      timed_forwards.append(forward)
    results[label] = row
    print(label, json.dumps(row), flush=True)
  big = max(photos, key=lambda p: p[0].size)[0]
  for key, x in (('sec_256', tiles[0][0]), (f'sec_{big.shape[0]}x{big.shape[1]}', big)):
    for label, sec in zip(('global', 'local_1.5x'), timed(timed_forwards, params, x[None],
                                                          _REPS.value)):
      results[label][key] = sec
    print(key, results['global'][key], results['local_1.5x'][key], flush=True)
  # Tiled vs whole on the largest photo, each norm against its own whole-image result.
  for label, forward in zip(('global', 'local_1.5x'), timed_forwards):
    whole = np.asarray(forward(params, big[None]))[0]
    for overlap in map(int, _OVERLAPS.value):
      tiled = inference.restore_image(forward, params, big, tile=_TILE.value, overlap=overlap)
      diff = np.abs(tiled - whole)
      key = f'{label}_tiled_{_TILE.value}_overlap_{overlap}'
      results[key] = dict(max_abs=float(diff.max()), mean_abs=float(diff.mean()),
                          psnr_vs_whole=float(metrics.psnr(tiled, whole, data_range=1.0)))
      print(key, results[key], flush=True)
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
