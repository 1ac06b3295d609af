r"""Cuts the GoPro training frames into the official 512x512 crops (step 256).

  python -m hinet_jax.prepare_gopro --input_dir=/data/GoPro --num_workers=8

reads the training pairs of `gopro_source(input_dir, 'train')` (the prepared
`train/{input,target}`, or the raw GOPRO_Large `train/<seq>/{blur,sharp}`) and
writes `<output_dir>/train/blur_crops/<name>_s<idx:03d>.png` and the same names
in `<output_dir>/train/sharp_crops` (--output_dir defaults to --input_dir), the
layout `gopro_source(root, 'train', crops=True)` and `configs/gopro.py` read,
as HINet scripts/data_preparation/gopro.py does. Window positions follow that
script (BasicSR `extract_subimages`, crop_size 512, step 256, thresh_size 0): a
1280x720 frame gives rows [0, 208] x columns [0, 256, 512, 768] = 8 crops, the
last row flush with the bottom border. Training then takes random 256x256 crops
of these.

Crops are written atomically, a pair whose crops all exist is skipped (an
interrupted run resumes), and the settings are recorded in
`<output_dir>/train/crop_settings.json`: a rerun with other settings, or into
folders holding other files, stops with a message instead of mixing two sets of
crops. --format=npy writes raw arrays that training memory-maps instead of
decoding (see `prepare_sidd`).

A mistake in the flags, a path or the data prints one message naming the option or file and exits
with status 2; --traceback shows the Python traceback as well.
"""

import os

from absl import app
from absl import flags

from hinet_jax.data import datasets
from hinet_jax.data import prepare as prepare_lib

CROP_SIZE = 512  # HINet scripts/data_preparation/gopro.py: opt['crop_size'] = 512
STEP = 256  # opt['step'] = 256
THRESH_SIZE = 0  # opt['thresh_size'] = 0
# Upstream's save folders (gopro.py opt['save_folder']), read back by `datasets.gopro_source`.
BLUR_CROPS, SHARP_CROPS = 'blur_crops', 'sharp_crops'


def crop_dirs(output_dir):
  """(blur crops folder, sharp crops folder) under output_dir, where gopro_source finds them."""
  train = os.path.join(os.fspath(output_dir), 'train')
  return os.path.join(train, BLUR_CROPS), os.path.join(train, SHARP_CROPS)


def prepare(input_dir, output_dir=None, num_workers=None, crop_size=CROP_SIZE, step=STEP,
            thresh_size=THRESH_SIZE, fmt='png'):
  """Cuts every GoPro training pair under input_dir into crops (multiprocess, progress bar).

  Args:
    input_dir: GoPro folder holding train/ (prepared input/target or raw <seq>/blur,sharp).
    output_dir: destination root (None: input_dir); train/blur_crops and train/sharp_crops
      are created in it.
    num_workers: processes (None = all cores; 0 or 1 = in this process).
    crop_size: window size.
    step: stride.
    thresh_size: see `prepare.crop_starts`.
    fmt: crop file format, 'png' or 'npy' (see `prepare.crop_pair`).

  Returns:
    total number of crops written.

  Raises:
    errors.OutputExistsError: the crop folders hold crops cut with other settings.
  """
  prepare_lib.check_format(fmt)  # before any worker starts
  output_dir = input_dir if output_dir is None else output_dir
  pairs = datasets.gopro_source(input_dir, 'train').pairs
  blur_dir, sharp_dir = crop_dirs(output_dir)
  settings = dict(dataset='gopro', crop_size=crop_size, step=step, thresh_size=thresh_size,
                  format=fmt)
  prepare_lib.claim_output(os.path.dirname(blur_dir), [blur_dir, sharp_dir], settings)
  return prepare_lib.crop_all(pairs, blur_dir, sharp_dir, crop_size=crop_size, step=step,
                              thresh_size=thresh_size, fmt=fmt, num_workers=num_workers,
                              desc='GoPro crops')


def define_flags():
  """Defines the CLI flags (only when run as a program, so importing adds none)."""
  flags.DEFINE_string('input_dir', None, 'GoPro folder holding train/ (input/target, or the raw '
                      '<seq>/blur,sharp of GOPRO_Large).')
  flags.DEFINE_string('output_dir', None, 'Root that gets train/blur_crops/ and '
                      'train/sharp_crops/ (default: --input_dir).')
  prepare_lib.define_crop_flags(CROP_SIZE, STEP, THRESH_SIZE)
  flags.mark_flags_as_required(['input_dir'])


def main(argv):
  """Crops --input_dir into --output_dir (the flags `define_flags` adds)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  output_dir = f.output_dir or f.input_dir
  prepare_lib.check_dirs(f.input_dir, output_dir, 'the GoPro folder (holding train/)')
  prepare(f.input_dir, output_dir, f.num_workers, f.crop_size, f.step, f.thresh_size,
          f['format'].value)
