r"""Cuts SIDD-Medium sRGB scenes into the official 512x512 training crops (step 384).

  python -m hinet_jax.prepare_sidd --input_dir=/data/SIDD_Medium_Srgb \
      --output_dir=/data/SIDD/train --num_workers=8

writes `<output_dir>/input_crops/<name>_s<idx:03d>.PNG` and the same names in
`<output_dir>/gt_crops`, where <name> is the file stem without '_NOISY'/'_GT'
(e.g. '0001_SRGB_010_s001.PNG'), as HINet scripts/data_preparation/sidd.py
does. Window positions follow that script (crop_size 512, step 384,
thresh_size 0): windows start at 0, step, 2*step, ... and, when the last one
stops short of the border by more than thresh_size pixels, one more window is
placed flush with the border, so with thresh_size=0 the whole image is covered
(the border crop overlaps its neighbour). Crops are written atomically, and a
pair whose crops all exist is skipped, so an interrupted run can be resumed.

--format=npy writes raw arrays (`<name>_s<idx:03d>.npy`, 768 KiB a crop, about
3x the PNGs) that training memory-maps instead of decoding: a 256x256 training
crop then costs a copy of its window, not the decoding of two 512x512 PNGs
(~17 ms a pair per core), which a GPU training at full speed would otherwise
wait for (bench/README.md, input pipeline).

A mistake in the flags, a path or the data prints one message naming the option or file and exits
with status 2; --traceback shows the Python traceback as well.
"""

import functools
import multiprocessing
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tqdm

from hinet_jax import errors
from hinet_jax.data import datasets
from hinet_jax.data import image_ops

CROP_SIZE = 512  # HINet scripts/data_preparation/sidd.py: opt['crop_size'] = 512
STEP = 384  # opt['step'] = 384
THRESH_SIZE = 0  # opt['thresh_size'] = 0


def crop_starts(length, crop_size=CROP_SIZE, step=STEP, thresh_size=THRESH_SIZE):
  """Window start offsets along one axis, as the official script computes them.

  Args:
    length: image height or width.
    crop_size: window size.
    step: stride between windows.
    thresh_size: a leftover border wider than this gets a border-aligned window.

  Returns:
    list of int start offsets.
  """
  if length < crop_size:
    raise ValueError(f'side of {length} px is smaller than the crop size {crop_size}')
  starts = list(range(0, length - crop_size + 1, step))
  if length - (starts[-1] + crop_size) > thresh_size:
    starts.append(length - crop_size)
  return starts


def crop_boxes(height, width, crop_size=CROP_SIZE, step=STEP, thresh_size=THRESH_SIZE):
  """All (top, left) windows in the official order: row by row, 1-based index order.

  Args:
    height: image height.
    width: image width.
    crop_size: window size.
    step: stride.
    thresh_size: see crop_starts.

  Returns:
    list of (top, left).
  """
  return [(top, left) for top in crop_starts(height, crop_size, step, thresh_size)
          for left in crop_starts(width, crop_size, step, thresh_size)]


FORMATS = ('png', 'npy')


def _check_format(fmt):
  if fmt not in FORMATS:
    raise ValueError(f'format must be one of {FORMATS}, got {fmt!r}')


def crop_pair(pair, output_dir, crop_size=CROP_SIZE, step=STEP, thresh_size=THRESH_SIZE,
              fmt='png'):
  """Crops one (noisy, gt) pair into input_crops/ and gt_crops/.

  Args:
    pair: (noisy_path, gt_path, name).
    output_dir: folder holding input_crops/ and gt_crops/.
    crop_size: window size.
    step: stride.
    thresh_size: see crop_starts.
    fmt: 'png' (the source's extension, as upstream) or 'npy' (raw arrays, memory-mapped
      by training).

  Returns:
    number of crops written (0 if the pair was already done).
  """
  _check_format(fmt)
  noisy_path, gt_path, name = pair
  ext = os.path.splitext(noisy_path)[1] if fmt == 'png' else image_ops.ARRAY_EXTENSION
  out = {k: os.path.join(output_dir, k) for k in ('input_crops', 'gt_crops')}
  item = datasets.read_pair(noisy_path, gt_path, name)
  h, w = item['lq'].shape[:2]
  try:
    boxes = crop_boxes(h, w, crop_size, step, thresh_size)
  except ValueError as e:
    raise errors.InvalidInputError(f'{noisy_path}: {e}; lower --crop_size') from None
  names = [f'{name}_s{i:03d}{ext}' for i in range(1, len(boxes) + 1)]
  if all(os.path.exists(os.path.join(out[k], n)) for k in out for n in names):
    return 0
  for (top, left), crop_name in zip(boxes, names):
    window = np.s_[top:top + crop_size, left:left + crop_size]
    image_ops.write_image(os.path.join(out['input_crops'], crop_name), item['lq'][window])
    image_ops.write_image(os.path.join(out['gt_crops'], crop_name), item['gt'][window])
  return len(boxes)


def prepare(input_dir, output_dir, num_workers=None, crop_size=CROP_SIZE, step=STEP,
            thresh_size=THRESH_SIZE, fmt='png'):
  """Crops every SIDD-Medium pair under input_dir (multiprocess, progress bar).

  Args:
    input_dir: SIDD_Medium_Srgb folder (or its Data/ sub-folder).
    output_dir: destination; input_crops/ and gt_crops/ are created in it.
    num_workers: processes (None = all cores; 0 or 1 = in this process).
    crop_size: window size.
    step: stride.
    thresh_size: see crop_starts.
    fmt: crop file format, 'png' or 'npy' (see `crop_pair`).

  Returns:
    total number of crops written.
  """
  _check_format(fmt)  # before any worker starts
  pairs = datasets.list_sidd_medium_pairs(input_dir)
  for sub in ('input_crops', 'gt_crops'):
    os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
  work = functools.partial(crop_pair, output_dir=output_dir, crop_size=crop_size, step=step,
                           thresh_size=thresh_size, fmt=fmt)
  num_workers = os.cpu_count() if num_workers is None else num_workers
  logging.info('Cropping %d SIDD pairs from %s into %s with %d workers', len(pairs), input_dir,
               output_dir, num_workers)
  with tqdm.tqdm(total=len(pairs), unit='pair', desc='SIDD crops') as bar:
    if num_workers <= 1:
      results = (work(p) for p in pairs)
      total = sum(_tick(bar, n) for n in results)
    else:
      # spawn: safe even when the parent already started JAX/grain threads.
      ctx = multiprocessing.get_context('spawn')
      with ctx.Pool(num_workers) as pool:
        total = sum(_tick(bar, n) for n in pool.imap_unordered(work, pairs))
  logging.info('Wrote %d crops', total)
  return total


def _tick(bar, n):
  """Advances the progress bar by one pair and passes the crop count through."""
  bar.update(1)
  return n


def define_flags():
  """Defines the CLI flags (only when run as a program, so importing adds none)."""
  flags.DEFINE_string('input_dir', None, 'SIDD_Medium_Srgb folder (holding Data/).')
  flags.DEFINE_string('output_dir', None, 'Output folder; gets input_crops/ and gt_crops/.')
  flags.DEFINE_integer('num_workers', None, 'Processes (default: all cores).')
  flags.DEFINE_integer('crop_size', CROP_SIZE, 'Crop size (official: 512).')
  flags.DEFINE_integer('step', STEP, 'Stride between crops (official: 384).')
  flags.DEFINE_integer('thresh_size', THRESH_SIZE,
                       'Border leftover above which a border-aligned crop is added.')
  flags.DEFINE_enum('format', 'png', FORMATS, 'Crop files: png (as upstream) or npy (raw '
                    'arrays that training memory-maps instead of decoding: ~3x the disk, no '
                    'decoding cost).')
  flags.mark_flags_as_required(['input_dir', 'output_dir'])


def main(argv):
  """Crops --input_dir into --output_dir (the flags `define_flags` adds)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if not os.path.isdir(f.input_dir):
    raise errors.MissingPathError(f'--input_dir={f.input_dir} does not exist or is not a folder: '
                                  'pass the SIDD_Medium_Srgb folder (holding Data/).')
  if os.path.exists(f.output_dir) and not os.path.isdir(f.output_dir):
    raise errors.OutputExistsError(f'--output_dir={f.output_dir} is a file; pass a folder.')
  prepare(f.input_dir, f.output_dir, f.num_workers, f.crop_size, f.step, f.thresh_size,
          f['format'].value)
