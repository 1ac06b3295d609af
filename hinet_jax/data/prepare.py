"""Cutting training pairs into overlapping crops, as the official preparation scripts do.

HINet's scripts/data_preparation/{sidd,gopro}.py run BasicSR's `extract_subimages`: windows of
`crop_size` start at 0, step, 2*step, ..., and when the last one stops short of the border by more
than `thresh_size`, one more is placed flush with it (thresh_size=0 covers the whole image). Crop i
(1-based, row by row) of pair NAME is saved as `NAME_s{i:03d}` with the source's extension.

`prepare_sidd` and `prepare_gopro` choose the pairs, settings and folders; this module cuts. Crops
are written atomically, a pair whose crops all exist is skipped (a rerun resumes), and the settings
are recorded (`crop_settings.json`) so that a rerun with other settings stops instead of mixing.
"""

import functools
import json
import multiprocessing
import os
from typing import Dict, List, Optional, Sequence, Tuple

from absl import flags
from absl import logging
import numpy as np
import tqdm

from hinet_jax import errors
from hinet_jax import files
from hinet_jax.data import image_ops
from hinet_jax.data import paired_files

FORMATS = ('png', 'npy')
SETTINGS_FILE = 'crop_settings.json'


def crop_starts(length: int, crop_size: int, step: int, thresh_size: int = 0) -> List[int]:
  """The window starts along a side of `length`; a leftover over thresh_size gets a flush one.

  Raises:
    ValueError: the side is smaller than the window.
  """
  if length < crop_size:
    raise ValueError(f'side of {length} px is smaller than the crop size {crop_size}')
  starts = list(range(0, length - crop_size + 1, step))
  if length - (starts[-1] + crop_size) > thresh_size:
    starts.append(length - crop_size)
  return starts


def crop_boxes(height: int, width: int, crop_size: int, step: int,
               thresh_size: int = 0) -> List[Tuple[int, int]]:
  """Every (top, left) window in the official order: row by row, the order of the crop index."""
  return [(top, left) for top in crop_starts(height, crop_size, step, thresh_size)
          for left in crop_starts(width, crop_size, step, thresh_size)]


def check_format(fmt: str) -> None:
  """Raises a ValueError naming the accepted formats unless fmt is one of FORMATS."""
  if fmt not in FORMATS:
    raise errors.InvalidInputError(f'format must be one of {FORMATS}, got {fmt!r}')


def crop_pair(pair: paired_files.Pair, lq_dir: str, gt_dir: str, crop_size: int, step: int,
              thresh_size: int = 0, fmt: str = 'png') -> int:
  """Cuts one (lq_path, gt_path, name) pair into lq_dir/ and gt_dir/ under the same crop names.

  `fmt` is 'png' (the source's extension, as upstream) or 'npy' (raw arrays that training
  memory-maps). Returns the number of crops written, 0 when the pair was already done.

  Raises:
    errors.InvalidInputError: the pair is unreadable, mismatched or smaller than the crop.
  """
  lq_path, gt_path, name = pair
  ext = os.path.splitext(lq_path)[1] if fmt == 'png' else image_ops.ARRAY_EXTENSION
  item = paired_files.read_pair(lq_path, gt_path, name)
  h, w = item['lq'].shape[:2]
  try:
    boxes = crop_boxes(h, w, crop_size, step, thresh_size)
  except ValueError as e:
    raise errors.InvalidInputError(f'{lq_path}: {e}; lower --crop_size') from None
  names = [f'{name}_s{i:03d}{ext}' for i in range(1, len(boxes) + 1)]
  if all(os.path.exists(os.path.join(d, n)) for d in (lq_dir, gt_dir) for n in names):
    return 0
  for (top, left), crop_name in zip(boxes, names):
    window = np.s_[top:top + crop_size, left:left + crop_size]
    image_ops.write_image(os.path.join(lq_dir, crop_name), item['lq'][window])
    image_ops.write_image(os.path.join(gt_dir, crop_name), item['gt'][window])
  return len(boxes)


def claim_output(record_dir: str, crop_dirs: Sequence[str], settings: Dict[str, object]) -> None:
  """Records `settings` in record_dir/SETTINGS_FILE and creates crop_dirs.

  Raises:
    errors.OutputExistsError: the folders hold crops of other settings, or crops without a
      record (an older or foreign run), which a rerun would silently mix with new ones.
  """
  record = os.path.join(record_dir, SETTINGS_FILE)
  fix = (f'pass another --output_dir, or delete {" and ".join(crop_dirs)} (and {record}) '
         'to cut them again')
  if os.path.exists(record):
    with open(record) as f:
      previous = json.load(f)
    if previous != settings:
      raise errors.OutputExistsError(
          f'{record}: the crops there were cut with {previous}, not {settings}: {fix}.')
  elif any(os.path.isdir(d) and os.listdir(d) for d in crop_dirs):
    raise errors.OutputExistsError(
        f'{" or ".join(crop_dirs)} already holds files, but not from a run that recorded its '
        f'settings in {record}: {fix}.')
  for d in crop_dirs:
    os.makedirs(d, exist_ok=True)
  files.write_text(record, json.dumps(settings, indent=2, sort_keys=True) + '\n')


def crop_all(pairs: Sequence[paired_files.Pair], lq_dir: str, gt_dir: str, *, crop_size: int,
             step: int, thresh_size: int = 0, fmt: str = 'png', num_workers: Optional[int] = None,
             desc: str = 'crops') -> int:
  """`crop_pair` for every pair into claimed folders; returns the number of crops written.

  `num_workers` processes cut (None: all cores; 0 or 1: this process), under a progress bar.
  """
  work = functools.partial(crop_pair, lq_dir=lq_dir, gt_dir=gt_dir, crop_size=crop_size,
                           step=step, thresh_size=thresh_size, fmt=fmt)
  num_workers = os.cpu_count() if num_workers is None else num_workers
  logging.info('Cutting %d pairs into %s and %s with %d workers', len(pairs), lq_dir, gt_dir,
               num_workers)
  with tqdm.tqdm(total=len(pairs), unit='pair', desc=desc) as bar:
    if num_workers <= 1:
      total = sum(_tick(bar, work(p)) for p in pairs)
    else:
      # spawn: safe even when the parent already started JAX/grain threads.
      ctx = multiprocessing.get_context('spawn')
      with ctx.Pool(num_workers) as pool:
        total = sum(_tick(bar, n) for n in pool.imap_unordered(work, pairs))
  logging.info('Wrote %d crops', total)
  return total


def _tick(bar: tqdm.tqdm, n: int) -> int:
  """Advances the progress bar by one pair and passes the crop count through."""
  bar.update(1)
  return n


def define_crop_flags(crop_size: int, step: int, thresh_size: int) -> None:
  """Defines the flags every preparation program shares, with the dataset's official values."""
  flags.DEFINE_integer('num_workers', None, 'Processes (default: all cores).')
  flags.DEFINE_integer('crop_size', crop_size, f'Crop size (official: {crop_size}).')
  flags.DEFINE_integer('step', step, f'Stride between crops (official: {step}).')
  flags.DEFINE_integer('thresh_size', thresh_size,
                       'Border leftover above which a border-aligned crop is added '
                       f'(official: {thresh_size}).')
  flags.DEFINE_enum('format', 'png', FORMATS, 'Crop files: png (as upstream) or npy (raw '
                    'arrays that training memory-maps instead of decoding: ~3x the disk, no '
                    'decoding cost).')


def check_dirs(input_dir: str, output_dir: str, what: str) -> None:
  """Checks --input_dir/--output_dir before any work, naming the flag and the fix."""
  if not os.path.isdir(input_dir):
    raise errors.MissingPathError(f'--input_dir={input_dir} does not exist or is not a folder: '
                                  f'pass {what}.')
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise errors.OutputExistsError(f'--output_dir={output_dir} is a file; pass a folder.')
