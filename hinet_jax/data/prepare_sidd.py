r"""Cuts SIDD-Medium sRGB scenes into the official 512x512 training crops (step 384).

  python -m hinet_jax.prepare_sidd --input_dir=/data/SIDD_Medium_Srgb \
      --output_dir=/data/SIDD/train --num_workers=8

writes `<output_dir>/{input_crops,gt_crops}/<name>_s<idx:03d>.PNG`, <name> being the file stem
without '_NOISY'/'_GT' (e.g. '0001_SRGB_010_s001.PNG'), at the windows of HINet
scripts/data_preparation/sidd.py (`data/prepare.py`). A rerun resumes; one with other settings
stops instead of mixing two sets of crops. --format=npy writes raw arrays (about 3x the disk) that
training memory-maps instead of decoding (bench/README.md, input pipeline).

A mistake in the flags, a path or the data prints one message naming the option or file and exits
with status 2; --traceback shows the Python traceback as well.
"""

import os
from typing import List, Optional, Sequence

from absl import app
from absl import flags

from hinet_jax.data import layouts
from hinet_jax.data import prepare as prepare_lib

CROP_SIZE = 512  # HINet scripts/data_preparation/sidd.py: opt['crop_size'] = 512
STEP = 384  # opt['step'] = 384
THRESH_SIZE = 0  # opt['thresh_size'] = 0


def crop_starts(length: int, crop_size: int = CROP_SIZE, step: int = STEP,
                thresh_size: int = THRESH_SIZE) -> List[int]:
  """Window start offsets along one axis (`prepare.crop_starts` with the SIDD values)."""
  return prepare_lib.crop_starts(length, crop_size, step, thresh_size)


def prepare(input_dir: str, output_dir: str, num_workers: Optional[int] = None,
            crop_size: int = CROP_SIZE, step: int = STEP, thresh_size: int = THRESH_SIZE,
            fmt: str = 'png') -> int:
  """Crops every pair of SIDD_Medium_Srgb `input_dir` into `output_dir`/{input,gt}_crops.

  The other arguments are `prepare.crop_all`'s. Returns the number of crops written; raises
  errors.OutputExistsError if output_dir holds crops cut with other settings.
  """
  prepare_lib.check_format(fmt)  # before any worker starts
  pairs = layouts.list_sidd_medium_pairs(input_dir)
  lq_dir, gt_dir = (os.path.join(output_dir, d) for d in ('input_crops', 'gt_crops'))
  settings = dict(dataset='sidd', crop_size=crop_size, step=step, thresh_size=thresh_size,
                  format=fmt)
  prepare_lib.claim_output(output_dir, [lq_dir, gt_dir], settings)
  return prepare_lib.crop_all(pairs, lq_dir, gt_dir, crop_size=crop_size, step=step,
                              thresh_size=thresh_size, fmt=fmt, num_workers=num_workers,
                              desc='SIDD crops')


def define_flags() -> None:
  """Defines the CLI flags (only when run as a program, so importing adds none)."""
  flags.DEFINE_string('input_dir', None, 'SIDD_Medium_Srgb folder (holding Data/).')
  flags.DEFINE_string('output_dir', None, 'Output folder; gets input_crops/ and gt_crops/.')
  prepare_lib.define_crop_flags(CROP_SIZE, STEP, THRESH_SIZE)
  flags.mark_flags_as_required(['input_dir', 'output_dir'])


def main(argv: Sequence[str]) -> None:
  """Crops --input_dir into --output_dir (the flags `define_flags` adds)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  prepare_lib.check_dirs(f.input_dir, f.output_dir, 'the SIDD_Medium_Srgb folder (holding Data/)')
  prepare(f.input_dir, f.output_dir, f.num_workers, f.crop_size, f.step, f.thresh_size,
          f['format'].value)
