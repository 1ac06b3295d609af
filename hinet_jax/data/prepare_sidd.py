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
pair whose crops all exist is skipped, so an interrupted run can be resumed;
the settings are recorded in `<output_dir>/crop_settings.json`, and a rerun
with other settings stops instead of mixing two sets of crops (`data/prepare.py`).

--format=npy writes raw arrays (`<name>_s<idx:03d>.npy`, 768 KiB a crop, about
3x the PNGs) that training memory-maps instead of decoding: a 256x256 training
crop then costs a copy of its window, not the decoding of two 512x512 PNGs
(~17 ms a pair per core), which a GPU training at full speed would otherwise
wait for (bench/README.md, input pipeline).

A mistake in the flags, a path or the data prints one message naming the option or file and exits
with status 2; --traceback shows the Python traceback as well.
"""

import os

from absl import app
from absl import flags

from hinet_jax.data import datasets
from hinet_jax.data import prepare as prepare_lib

CROP_SIZE = 512  # HINet scripts/data_preparation/sidd.py: opt['crop_size'] = 512
STEP = 384  # opt['step'] = 384
THRESH_SIZE = 0  # opt['thresh_size'] = 0
FORMATS = prepare_lib.FORMATS


def crop_starts(length, crop_size=CROP_SIZE, step=STEP, thresh_size=THRESH_SIZE):
  """Window start offsets along one axis (`prepare.crop_starts` with the SIDD values)."""
  return prepare_lib.crop_starts(length, crop_size, step, thresh_size)


def crop_boxes(height, width, crop_size=CROP_SIZE, step=STEP, thresh_size=THRESH_SIZE):
  """All (top, left) windows in the official order (`prepare.crop_boxes`, SIDD values)."""
  return prepare_lib.crop_boxes(height, width, crop_size, step, thresh_size)


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
    fmt: crop file format, 'png' or 'npy' (see `prepare.crop_pair`).

  Returns:
    total number of crops written.

  Raises:
    errors.OutputExistsError: output_dir holds crops cut with other settings.
  """
  prepare_lib.check_format(fmt)  # before any worker starts
  pairs = datasets.list_sidd_medium_pairs(input_dir)
  lq_dir, gt_dir = (os.path.join(output_dir, d) for d in ('input_crops', 'gt_crops'))
  settings = dict(dataset='sidd', crop_size=crop_size, step=step, thresh_size=thresh_size,
                  format=fmt)
  prepare_lib.claim_output(output_dir, [lq_dir, gt_dir], settings)
  return prepare_lib.crop_all(pairs, lq_dir, gt_dir, crop_size=crop_size, step=step,
                              thresh_size=thresh_size, fmt=fmt, num_workers=num_workers,
                              desc='SIDD crops')


def define_flags():
  """Defines the CLI flags (only when run as a program, so importing adds none)."""
  flags.DEFINE_string('input_dir', None, 'SIDD_Medium_Srgb folder (holding Data/).')
  flags.DEFINE_string('output_dir', None, 'Output folder; gets input_crops/ and gt_crops/.')
  prepare_lib.define_crop_flags(CROP_SIZE, STEP, THRESH_SIZE)
  flags.mark_flags_as_required(['input_dir', 'output_dir'])


def main(argv):
  """Crops --input_dir into --output_dir (the flags `define_flags` adds)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  prepare_lib.check_dirs(f.input_dir, f.output_dir, 'the SIDD_Medium_Srgb folder (holding Data/)')
  prepare(f.input_dir, f.output_dir, f.num_workers, f.crop_size, f.step, f.thresh_size,
          f['format'].value)
