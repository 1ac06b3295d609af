r"""Cuts the GoPro training frames into the official 512x512 crops (step 256).

  python -m hinet_jax.prepare_gopro --input_dir=/data/GoPro --num_workers=8

reads the training pairs of `gopro_source(input_dir, 'train')` and writes
`<output_dir>/train/{blur_crops,sharp_crops}/<name>_s<idx:03d>.png` (--output_dir defaults to
--input_dir), which `configs/gopro.py` reads, at the windows of HINet
scripts/data_preparation/gopro.py (`data/prepare.py`): a 1280x720 frame gives 2 x 4 = 8 crops.
A rerun resumes; one with other settings, or into folders holding other files, stops instead of
mixing two sets of crops. --format=npy: see `prepare_sidd`.

A mistake in the flags, a path or the data prints one message naming the option or file and exits
with status 2; --traceback shows the Python traceback as well.
"""

import os
from typing import Optional, Sequence, Tuple

from absl import app
from absl import flags

from hinet_jax.data import layouts
from hinet_jax.data import prepare as prepare_lib

CROP_SIZE = 512  # HINet scripts/data_preparation/gopro.py: opt['crop_size'] = 512
STEP = 256  # opt['step'] = 256
THRESH_SIZE = 0  # opt['thresh_size'] = 0
# Upstream's save folders (gopro.py opt['save_folder']), read back by `layouts.gopro_source`.
BLUR_CROPS, SHARP_CROPS = 'blur_crops', 'sharp_crops'


def crop_dirs(output_dir: str) -> Tuple[str, str]:
  """(blur crops folder, sharp crops folder) under output_dir, where gopro_source finds them."""
  train = os.path.join(os.fspath(output_dir), 'train')
  return os.path.join(train, BLUR_CROPS), os.path.join(train, SHARP_CROPS)


def prepare(input_dir: str, output_dir: Optional[str] = None, num_workers: Optional[int] = None,
            crop_size: int = CROP_SIZE, step: int = STEP, thresh_size: int = THRESH_SIZE,
            fmt: str = 'png') -> int:
  """Cuts every training pair of GoPro `input_dir` into `output_dir` (default: input_dir).

  The other arguments are `prepare.crop_all`'s. Returns the number of crops written; raises
  errors.OutputExistsError if the crop folders hold crops cut with other settings.
  """
  prepare_lib.check_format(fmt)  # before any worker starts
  output_dir = input_dir if output_dir is None else output_dir
  pairs = layouts.gopro_source(input_dir, 'train').pairs
  blur_dir, sharp_dir = crop_dirs(output_dir)
  settings = dict(dataset='gopro', crop_size=crop_size, step=step, thresh_size=thresh_size,
                  format=fmt)
  prepare_lib.claim_output(os.path.dirname(blur_dir), [blur_dir, sharp_dir], settings)
  return prepare_lib.crop_all(pairs, blur_dir, sharp_dir, crop_size=crop_size, step=step,
                              thresh_size=thresh_size, fmt=fmt, num_workers=num_workers,
                              desc='GoPro crops')


def define_flags() -> None:
  """Defines the CLI flags (only when run as a program, so importing adds none)."""
  flags.DEFINE_string('input_dir', None, 'GoPro folder holding train/ (input/target, or the raw '
                      '<seq>/blur,sharp of GOPRO_Large).')
  flags.DEFINE_string('output_dir', None, 'Root that gets train/blur_crops/ and '
                      'train/sharp_crops/ (default: --input_dir).')
  prepare_lib.define_crop_flags(CROP_SIZE, STEP, THRESH_SIZE)
  flags.mark_flags_as_required(['input_dir'])


def main(argv: Sequence[str]) -> None:
  """Crops --input_dir into --output_dir (the flags `define_flags` adds)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  output_dir = f.output_dir or f.input_dir
  prepare_lib.check_dirs(f.input_dir, output_dir, 'the GoPro folder (holding train/)')
  prepare(f.input_dir, output_dir, f.num_workers, f.crop_size, f.step, f.thresh_size,
          f['format'].value)
