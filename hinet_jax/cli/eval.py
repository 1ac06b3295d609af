r"""Evaluate a HINet checkpoint with a published protocol, or restore your own images.

Evaluate (NAME: sidd_val, gopro, reds, rain13k or folder); prints a table, writes per-image metrics
(CSV/JSON) and a summary JSON (local paths or gs://...):
  python eval.py --checkpoint=DIR [--which=latest|best] --protocol=NAME \
      --data_dir=PATH [--metrics_json=PATH] [--per_image=PATH.csv|.json] [--save_images=DIR] \
      [--tile=N --tile_overlap=N --blend=average|smooth] [--self_ensemble] [--precision=highest]

The summary holds the project's `psnr`/`ssim` and, beside them, `psnr_official`/`ssim_official`
(HINet's own conventions) and `official_peak_flips` (see hinet_jax/evaluation/engine.py).

Restore images of any size (no targets; PNG out with the input's bit depth):
  python eval.py --checkpoint=DIR --input=FILE_OR_DIR --output=DIR [--overwrite] [--panels] \
      [--tile=256 --tile_overlap=32] [--self_ensemble]

DIR is a converted checkpoint (model_config.json + params/) or a training workdir. This is the
program behind the top-level `eval.py` and the installed `hinet-eval` command.

A mistake in the flags, a path or the data prints one message naming the option or file and exits
with status 2 (checked before the model loads where possible); --traceback shows the Python
traceback as well.
"""

import csv
import io
import json
import os
from typing import List, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tqdm

from hinet_jax import api
from hinet_jax import backends
from hinet_jax import errors
from hinet_jax import files
from hinet_jax import models
from hinet_jax.cli import runner
from hinet_jax.data import image_ops
from hinet_jax.data import test_sets
from hinet_jax.evaluation import engine
from hinet_jax.evaluation import inference
from hinet_jax.evaluation import predictor as predictor_lib
from hinet_jax.evaluation import protocols as evaluate
from hinet_jax.evaluation import restore as restore_lib

RESTORE_TILE = restore_lib.DEFAULT_TILE
RESTORE_OVERLAP = restore_lib.DEFAULT_OVERLAP
PANEL_GAP = 8  # White pixels between the input and the restored image in a panel.

_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None,
    'Converted checkpoint dir (model_config.json + params/), training workdir, Hub-layout folder, '
    'or Hub repo (org/name, hf://org/name[@revision]; the hub extra).')
_WHICH = flags.DEFINE_enum('which', 'latest', ['latest', 'best'],
                           'For a training workdir: its latest or best (by PSNR) checkpoint.')
_PROTOCOL = flags.DEFINE_enum('protocol', None, list(evaluate.PROTOCOLS), 'Evaluation protocol.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Dataset folder of the protocol (see '
                                'hinet_jax/data/test_sets.py).')
_SUBSETS = flags.DEFINE_list('subsets', None, 'rain13k: evaluate only these test sets.')
_METRICS_JSON = flags.DEFINE_string('metrics_json', None, 'Write the summary as JSON here.')
_PER_IMAGE = flags.DEFINE_string(
    'per_image', None, 'Write per-image metrics here (.csv or .json); default: beside '
    '--metrics_json as <name>_per_image.csv.')
_SAVE_IMAGES = flags.DEFINE_string('save_images', None, 'Save the restored images (8-bit PNG).')
_INPUT = flags.DEFINE_string('input', None, 'Restore mode: an image file or a folder of images.')
_OUTPUT = flags.DEFINE_string('output', None, 'Restore mode: output folder.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace existing outputs.')
_BACKEND = flags.DEFINE_enum('backend', 'auto', list(backends.BACKENDS),
                             "How convolutions run: 'auto' (the C++ kernels on one CPU device, XLA's "
                             'elsewhere), xla or cpu (README, Backends).')
_PANELS = flags.DEFINE_bool('panels', False, 'Restore mode: also write <name>_panel.png, the '
                            'input and the restored image side by side.')
_TILE = flags.DEFINE_integer('tile', None, 'Tile side (0: whole images). Default: the protocol\'s '
                             f'(256 grid for gopro/reds/rain13k), {RESTORE_TILE} in restore mode.',
                             lower_bound=0)
_TILE_OVERLAP = flags.DEFINE_integer('tile_overlap', None, 'Minimum tile overlap. Default: 0 '
                                     f'(official grid) for protocols, {RESTORE_OVERLAP} in '
                                     'restore mode.', lower_bound=0)
_BLEND = flags.DEFINE_enum('blend', 'average', list(inference.BLENDS),
                           'How overlapping tiles are merged.')
_SELF_ENSEMBLE = flags.DEFINE_bool('self_ensemble', False, 'Average over the 8 flips/rotations.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', restore_lib.DEFAULT_BATCH_SIZE,
                                   'Images (sidd_val) or tiles per call.', lower_bound=1)
_LOCAL_STATS = flags.DEFINE_integer(
    'local_stats', None, 'Normalise with statistics over a window of this many pixels around '
    'each position (TLC), scaled per level; 0: 384, 1.5x the published 256 crops (give 1.5x your '
    "config's crop_size). Restore whole images (--tile=0) or overlap tiles by at least 2x the "
    'window.', lower_bound=0)
_LOW_MEMORY = flags.DEFINE_bool(
    'low_memory', False, 'Restore mode, CPU backend: hold the large kernels without their '
    'Winograd expansion (1x: 427 instead of 809 MB of kernels; slower, bench/README.md).')
_PRECISION = flags.DEFINE_enum('precision', 'highest', list(inference.PRECISIONS),
                               "Convolution precision: 'highest' computes float32 models in "
                               "float32; 'default' takes the accelerator's faster passes (bf16 on "
                               'TPU, TF32 on GPU) at some accuracy. No effect on CPU.')


def write_json(path, obj):
  """Writes JSON whole or not at all (a local path or gs://...)."""
  files.write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + '\n')


def write_per_image(path, rows):
  """Writes per-image metric rows as CSV (by default) or JSON (a .json path)."""
  if path.endswith('.json'):
    write_json(path, rows)
    return
  fields = ['subset', 'name', *engine.ROW_KEYS]
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=fields, extrasaction='ignore', lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  files.write_text(path, text.getvalue())


def per_image_path(per_image, metrics_json):
  """The per-image output path: --per_image, else derived from --metrics_json, else None."""
  if per_image:
    return per_image
  if metrics_json:
    return os.path.splitext(metrics_json)[0] + '_per_image.csv'
  return None


def make_save_fn(save_dir):
  """save_fn(subset, name, restored) writing <save_dir>/<subset>/<name>.png (8-bit)."""
  def save(subset, name, restored):
    image_ops.write_image(os.path.join(save_dir, subset, name + '.png'), restored, bit_depth=8)

  return save


def _check_output_dir(path, flag):
  """Refuses to write into a non-empty output folder unless --overwrite."""
  if path and os.path.exists(path) and not os.path.isdir(path):
    raise errors.OutputExistsError(f'--{flag}={path} is a file; pass a folder.')
  if path and os.path.isdir(path) and os.listdir(path) and not _OVERWRITE.value:
    raise errors.OutputExistsError(f'--{flag}={path} is not empty; pass --overwrite to write '
                                   'into it, or choose another folder.')


def check_tile_flags():
  """--tile_overlap must be smaller than the tile (given, or the mode's default)."""
  if _TILE_OVERLAP.value is None:
    return
  if _TILE.value is not None:
    tile = _TILE.value
  elif _PROTOCOL.value:
    tile = evaluate.get_protocol(_PROTOCOL.value).tile
  else:
    tile = RESTORE_TILE
  if tile and _TILE_OVERLAP.value >= tile:
    raise app.UsageError(f'--tile_overlap={_TILE_OVERLAP.value} must be smaller than the tile '
                         f'({tile}); lower it or pass a larger --tile.')


def check_protocol_flags():
  """Evaluate mode: checks --data_dir and the outputs, and lists the data, before the model loads.

  A bad layout or mismatched names then fail in seconds (the protocol lists the data again).
  """
  if not _DATA_DIR.value:
    raise app.UsageError('--protocol needs --data_dir (the dataset folder).')
  if not os.path.isdir(_DATA_DIR.value):
    raise errors.MissingPathError(
        f'--data_dir={_DATA_DIR.value} does not exist or is not a folder: pass the '
        f'{_PROTOCOL.value} dataset folder (its layout: hinet_jax/data/test_sets.py).')
  _check_output_dir(_SAVE_IMAGES.value, 'save_images')
  test_sets.test_set_sources(_PROTOCOL.value, _DATA_DIR.value, _SUBSETS.value)


def check_restore_flags():
  """Restore mode: checks --input and --output before any model loads.

  Returns:
    The image files to restore.
  """
  if not _OUTPUT.value:
    raise app.UsageError('--input needs --output (the folder to write restored images to).')
  if not os.path.exists(_INPUT.value):
    raise errors.MissingPathError(f'--input={_INPUT.value} does not exist: pass an image file or '
                                  'a folder of images.')
  if os.path.exists(_OUTPUT.value) and not os.path.isdir(_OUTPUT.value):
    raise errors.OutputExistsError(f'--output={_OUTPUT.value} is a file; pass a folder.')
  images, skipped = list_input_images(_INPUT.value)
  for path in skipped:
    logging.warning('Skipping %s: not an image (extensions %s).', path,
                    ', '.join(image_ops.IMAGE_EXTENSIONS))
  extensions = ', '.join(image_ops.IMAGE_EXTENSIONS)
  if not images and os.path.isfile(_INPUT.value):
    raise errors.InvalidInputError(f'--input={_INPUT.value} is not an image file (extensions: '
                                   f'{extensions}).')
  if not images:
    raise errors.InvalidInputError(f'--input={_INPUT.value} holds no image files (extensions: '
                                   f'{extensions}).')
  return images, skipped


def format_table(summary: dict) -> str:
  """A plain-text table of a summary: one line per subset, then the average.

  `PSNR*`/`SSIM*` are the official code's conventions; `flips` the images whose official peak
  was guessed 255 (float output over 1.0).
  """
  header = (f'{"set":<12}{"images":>8}{"PSNR":>9}{"SSIM":>8}{"PSNR*":>9}{"SSIM*":>8}{"flips":>7}'
            f'{"in PSNR":>9}{"in SSIM":>9}')
  line = lambda name, s: (f'{name:<12}{s["num_images"]:>8d}{s["psnr"]:>9.3f}{s["ssim"]:>8.4f}'
                          f'{s["psnr_official"]:>9.3f}{s["ssim_official"]:>8.4f}'
                          f'{s[engine.FLIPS_KEY]:>7d}{s["input_psnr"]:>9.3f}'
                          f'{s["input_ssim"]:>9.4f}')
  out = [header]
  for name, s in summary.get('subsets', {}).items():
    out.append(line(name, s))
  out.append(line('average' if 'subsets' in summary else summary.get('protocol', 'all'), summary))
  out.append('PSNR/SSIM: fixed peak, per-channel SSIM. PSNR*/SSIM*: as the official code (peak '
             'guessed from the output, 3-D SSIM); flips: images whose guessed peak was not their '
             'own (float output over 1.0 scored on 255).')
  return '\n'.join(out)


def list_input_images(path: str) -> Tuple[List[str], List[str]]:
  """(images, skipped): the image files at `path` (a file, or the files directly in a folder),
  sorted, and the other files; fails where two images would write the same output."""
  if os.path.isfile(path):
    found = [path]
  elif os.path.isdir(path):
    found = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if os.path.isfile(os.path.join(path, f)))
  else:
    raise errors.MissingPathError(f'--input {path} does not exist.')
  images = [f for f in found if image_ops.is_image_file(f)]
  skipped = [f for f in found if not image_ops.is_image_file(f)]
  stems = {}
  for f in images:
    stem = os.path.splitext(os.path.basename(f))[0]
    if stem in stems:
      raise errors.InvalidInputError(
          f'{stems[stem]} and {f} would both be written as {stem}.png; rename one.')
    stems[stem] = f
  return images, skipped


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = PANEL_GAP) -> np.ndarray:
  """A before/after panel `left | white gap | right` of two HWC images of one shape and dtype."""
  white = np.iinfo(left.dtype).max if np.issubdtype(left.dtype, np.integer) else 1.0
  spacer = np.full((left.shape[0], gap, left.shape[2]), white, left.dtype)
  return np.concatenate([left, spacer, right], axis=1)


def restore_files(restore_fn, inputs: Sequence[str], output_dir: str, *, overwrite: bool = False,
                  panels: bool = False, progress: bool = True) -> dict:
  """Restores image files into `output_dir` as `<stem>.png` of the input's bit depth.

  Args:
    restore_fn: `restore_fn(image, progress=...)` -> restored float32 HWC (a `Predictor`); each
      file goes through `restore.restore_file`, as on the restore page.
    inputs: image paths (`list_input_images`).
    output_dir: destination.
    overwrite: replace existing outputs (else they are kept, with a log line).
    panels: also write `<stem>_panel.png`, input and output side by side.
    progress: show a progress bar.

  Returns:
    {'written': [...], 'existing': [...]} output paths.
  """
  os.makedirs(output_dir, exist_ok=True)
  result = {'written': [], 'existing': []}
  for path in tqdm.tqdm(inputs, unit='image', disable=not progress):
    stem = os.path.splitext(os.path.basename(path))[0]
    out_path = os.path.join(output_dir, stem + '.png')
    if os.path.exists(out_path) and not overwrite:
      logging.info('%s exists; skipping %s (pass --overwrite to replace it).', out_path, path)
      result['existing'].append(out_path)
      continue
    done = restore_lib.restore_file(restore_fn, path, out_path)
    if panels:
      image_ops.write_image(os.path.join(output_dir, stem + '_panel.png'),
                            side_by_side(done.lq, done.restored))
    result['written'].append(out_path)
  return result


def run_protocol(predict_fn, params):
  """Evaluate mode: runs --protocol on --data_dir and writes the requested outputs."""
  rows = []
  save_fn = make_save_fn(_SAVE_IMAGES.value) if _SAVE_IMAGES.value else None
  kwargs = {} if _TILE.value is None else {'tile': _TILE.value}
  summary = evaluate.evaluate_protocol(
      predict_fn, params, _PROTOCOL.value, _DATA_DIR.value, overlap=_TILE_OVERLAP.value,
      blend=_BLEND.value, self_ensemble=_SELF_ENSEMBLE.value, batch_size=_BATCH_SIZE.value,
      subsets=_SUBSETS.value, rows=rows, save_fn=save_fn, **kwargs)
  summary['checkpoint'] = (os.path.abspath(_CHECKPOINT.value) if files.is_local(_CHECKPOINT.value)
                           else _CHECKPOINT.value)
  summary['which'] = _WHICH.value
  print(format_table(summary))
  if _METRICS_JSON.value:
    write_json(_METRICS_JSON.value, summary)
    logging.info('Wrote the summary to %s.', _METRICS_JSON.value)
  rows_path = per_image_path(_PER_IMAGE.value, _METRICS_JSON.value)
  if rows_path:
    write_per_image(rows_path, rows)
    logging.info('Wrote %d per-image rows to %s.', len(rows), rows_path)
  return summary


def run_restore(predictor, images, skipped):
  """Restore mode: restores `images` (from --input) into --output."""
  result = restore_files(predictor, images, _OUTPUT.value, overwrite=_OVERWRITE.value,
                         panels=_PANELS.value)
  print(f'Restored {len(result["written"])} image(s) into {_OUTPUT.value}; '
        f'{len(result["existing"])} existing output(s) kept, {len(skipped)} non-image file(s) '
        'skipped.')
  return result


def restore_options() -> dict:
  """The `Predictor` tiling options of restore mode."""
  tile = RESTORE_TILE if _TILE.value is None else (_TILE.value or None)
  overlap = RESTORE_OVERLAP if _TILE_OVERLAP.value is None else _TILE_OVERLAP.value
  return dict(tile=tile, overlap=overlap if tile else 0, blend=_BLEND.value,
              self_ensemble=_SELF_ENSEMBLE.value, batch_size=_BATCH_SIZE.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _CHECKPOINT.value:
    raise app.UsageError('--checkpoint is required.')
  if bool(_PROTOCOL.value) == bool(_INPUT.value):
    raise app.UsageError('Pass either --protocol (evaluate) or --input/--output (restore).')
  if not (api.is_hub_repo(_CHECKPOINT.value) or files.is_dir(_CHECKPOINT.value)):
    raise errors.MissingPathError(
        f'--checkpoint={_CHECKPOINT.value} does not exist or is not a folder: pass a converted '
        'checkpoint (python -m hinet_jax.convert) or a training workdir.')
  # Paths and data are checked before the model loads, so a mistake costs seconds.
  check_tile_flags()
  if _PROTOCOL.value:
    check_protocol_flags()
  else:
    images, skipped = check_restore_flags()
  backends.prepare_process()  # before JAX runs anything
  model, params = api.load_pretrained(_CHECKPOINT.value, which=_WHICH.value, backend=_BACKEND.value)
  if _LOCAL_STATS.value is not None:
    model = models.with_local_stats(model, models.window_of_flag(_LOCAL_STATS.value))
  if _PROTOCOL.value:
    forward = inference.Forward(model, _BACKEND.value, precision=_PRECISION.value)
    _log_model(model, forward.backend)
    run_protocol(forward, params)
  else:  # The predictor holds the prepared weights alone.
    predictor = predictor_lib.Predictor(model, params, backend=_BACKEND.value,
                                        precision=_PRECISION.value,
                                        low_memory=_LOW_MEMORY.value, **restore_options())
    del params
    _log_model(model, predictor.forward.backend)
    run_restore(predictor, images, skipped)


def _log_model(model, backend):
  logging.info('%s: %s on backend %s, %s precision.', _CHECKPOINT.value, type(model).__name__,
               backend.name, _PRECISION.value)


def run():
  """`hinet-eval` and `python eval.py`."""
  runner.run(main)


if __name__ == '__main__':
  run()
