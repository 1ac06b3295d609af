r"""Input pipeline throughput: 256x256 training crops per second from PNG or .npy pairs.

  python -m bench.input_pipeline --workers=0,1,2 --formats=png,npy --json=/tmp/input_bench.json

Writes a temporary folder of pairs (crops of the scikit-image photographs,
lq = gt + Gaussian noise, so decoding cost is like real photos rather than
incompressible noise) in each of --formats (png: decoded in full; npy: raw
arrays, memory-mapped, as `prepare_sidd --format=npy` writes them), then times
`input_pipeline.create_train_iter` with each worker count: reading both
images, random crop, dihedral augmentation, float32 conversion and batching.
The first batch (worker start-up) is timed separately. Compare pairs/s with
what one training step consumes: the global batch (64 in the HINet recipes:
8 per GPU x 8 GPUs).
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from hinet_jax.data import demo_set
from hinet_jax.data import image_ops
from hinet_jax.data import input_pipeline
from hinet_jax.data import paired_files

_NUM_PAIRS = flags.DEFINE_integer('num_pairs', 32, 'PNG pairs to write.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 512, 'Side of each PNG (SIDD crops: 512).')
_CROP_SIZE = flags.DEFINE_integer('crop_size', 256, 'Training crop size.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Batch size of the timed pipeline.')
_STEP_BATCH = flags.DEFINE_integer('step_batch', 64, 'Pairs one training step consumes.')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 40, 'Timed batches per setting.')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'], 'Worker counts to time.')
_NUM_THREADS = flags.DEFINE_integer('num_threads', 2, 'Reader threads (per worker).')
_FORMATS = flags.DEFINE_list('formats', ['png', 'npy'], 'Pair file formats to time.')
_JSON = flags.DEFINE_string('json', None, 'Optional path for the results as JSON.')


def write_pairs(folder, num_pairs, size, seed=0, ext='.png'):
  """Writes num_pairs pairs (files ending in `ext`) cut from the demo photographs.

  Args:
    folder: output root (gets input/ and target/).
    num_pairs: number of pairs.
    size: side of each image.
    seed: noise seed.

  Returns:
    the folder.
  """
  rng = np.random.default_rng(seed)
  photos = [demo_set.load_demo_image(n) for n in demo_set.DEMO_TRAIN_IMAGES]
  photos = [p for p in photos if min(p.shape[:2]) >= size]
  for i in range(num_pairs):
    photo = photos[i % len(photos)]
    top = int(rng.integers(0, photo.shape[0] - size + 1))
    left = int(rng.integers(0, photo.shape[1] - size + 1))
    gt = photo[top:top + size, left:left + size]
    lq = demo_set.degrade(gt, rng, 'noise', sigma=25)
    image_ops.write_image(os.path.join(folder, 'input', f'{i:04d}{ext}'), lq)
    image_ops.write_image(os.path.join(folder, 'target', f'{i:04d}{ext}'), gt)
  return folder


def time_pipeline(source, num_workers, fmt):
  """Times one setting; returns a dict of the measurements."""
  it = input_pipeline.create_train_iter(
      source, batch_size=_BATCH_SIZE.value, crop_size=_CROP_SIZE.value, augment='dihedral',
      seed=0, num_workers=num_workers, num_threads=_NUM_THREADS.value)
  try:
    start = time.perf_counter()
    next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(_NUM_BATCHES.value):
      next(it)
    elapsed = time.perf_counter() - start
  finally:
    if hasattr(it, 'close'):
      it.close()
  pairs_per_s = _NUM_BATCHES.value * _BATCH_SIZE.value / elapsed
  return {'format': fmt, 'num_workers': num_workers, 'first_batch_s': first,
          'pairs_per_s': pairs_per_s,
          'steps_per_s_at_step_batch': pairs_per_s / _STEP_BATCH.value}


def main(argv):
  del argv
  rows = []
  for fmt in _FORMATS.value:
    with tempfile.TemporaryDirectory() as tmp:
      write_pairs(tmp, _NUM_PAIRS.value, _IMAGE_SIZE.value, ext='.' + fmt)
      source = paired_files.PairedFolderSource(tmp)
      rows += [time_pipeline(source, int(w), fmt) for w in _WORKERS.value]
  print(f'\n{_NUM_PAIRS.value} pairs of {_IMAGE_SIZE.value}x{_IMAGE_SIZE.value}, '
        f'{_CROP_SIZE.value}x{_CROP_SIZE.value} crops, batch {_BATCH_SIZE.value}, '
        f'{_NUM_THREADS.value} reader thread(s) per process, {os.cpu_count()} CPU cores')
  print(f'{"format":>7} {"workers":>8} {"first batch s":>14} {"pairs/s":>9} '
        f'{"steps/s @" + str(_STEP_BATCH.value):>13}')
  for r in rows:
    print(f'{r["format"]:>7} {r["num_workers"]:>8} {r["first_batch_s"]:>14.2f} '
          f'{r["pairs_per_s"]:>9.1f} {r["steps_per_s_at_step_batch"]:>13.2f}')
  print(f'One training step consumes {_STEP_BATCH.value} pairs (global batch); the pipeline '
        'keeps up while steps/s above exceeds the measured training steps/s.')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump({'config': {k: flags.FLAGS[k].value for k in (
          'num_pairs', 'image_size', 'crop_size', 'batch_size', 'step_batch', 'num_batches',
          'workers', 'num_threads', 'formats')}, 'cpu_count': os.cpu_count(),
                 'results': rows}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
