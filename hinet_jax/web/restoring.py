"""What the restore page does, without Gradio: uploads in, restored PNGs and a summary out.

Every image goes through `evaluation.restore.restore_file`, the function behind `eval.py --input`.
Upload names are labels only: files are written under names this module makes.
"""

import dataclasses
import functools
import os
import shutil
import tempfile
import time
from typing import Callable, List, Optional, Sequence

from absl import logging
import numpy as np

from hinet_jax import errors
from hinet_jax.data import demo_set
from hinet_jax.data import image_ops
from hinet_jax.evaluation import metrics
from hinet_jax.evaluation import restore

UPLOAD_TYPES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff')
TILE_CHOICES = (128, 256, 384, 512)
RESULT_MAX_AGE_S = 3600  # Results older than this are deleted when the next restore starts.
SAMPLE_IMAGE, SAMPLE_SIGMA, SAMPLE_SEED = 'astronaut', 25.0, 0

Progress = Callable[[float, str], None]  # (fraction done, what is running)


@dataclasses.dataclass
class Settings:
  """The page's options: `inference.restore_image` arguments."""
  tile: int = restore.DEFAULT_TILE
  overlap: int = restore.DEFAULT_OVERLAP
  blend: str = 'average'
  self_ensemble: bool = False

  def options(self) -> dict:
    if self.tile not in TILE_CHOICES:
      raise errors.InvalidInputError(f'Tile size {self.tile} is not offered: choose one of '
                                     f'{", ".join(map(str, TILE_CHOICES))}.')
    if not 0 <= self.overlap < self.tile // 2:
      raise errors.InvalidInputError(f'Tile overlap {self.overlap} must be between 0 and '
                                     f'{self.tile // 2 - 1} for tiles of {self.tile}.')
    return dict(tile=int(self.tile), overlap=int(self.overlap), blend=self.blend,
                self_ensemble=bool(self.self_ensemble))


@dataclasses.dataclass
class PageResult:
  """One restored upload: its label, the PNG to download, an 8-bit preview of the input for the
  comparison, the time and the metrics against a reference (None without one)."""
  name: str
  restored_path: str
  before_path: str
  seconds: float
  shape: tuple
  bit_depth: int
  metrics: Optional[dict] = None


class Workspace:
  """The server's one temporary folder (Gradio's uploads, results, the sample photo), removed by
  `close()` when the server stops."""

  def __init__(self):
    self.root = tempfile.mkdtemp(prefix='hinet-serve-')
    self.uploads = os.path.join(self.root, 'uploads')
    self.results = os.path.join(self.root, 'results')
    os.makedirs(self.uploads)
    os.makedirs(self.results)

  def new_result_dir(self) -> str:
    """A fresh folder for one restore; results older than RESULT_MAX_AGE_S are deleted first."""
    now = time.time()
    for entry in os.scandir(self.results):
      if now - entry.stat().st_mtime > RESULT_MAX_AGE_S:
        shutil.rmtree(entry.path, ignore_errors=True)
    return tempfile.mkdtemp(dir=self.results)

  def close(self) -> None:
    shutil.rmtree(self.root, ignore_errors=True)


def make_sample(folder: str) -> tuple:
  """(noisy, clean) PNG paths of the built-in sample: a scikit-image photo with seeded Gaussian
  noise (sigma 25 of 255, the demo model's training noise)."""
  clean = demo_set.load_demo_image(SAMPLE_IMAGE)
  noisy = demo_set.degrade(clean, np.random.default_rng(SAMPLE_SEED), 'noise', SAMPLE_SIGMA)
  paths = tuple(os.path.join(folder, f'sample_{kind}.png') for kind in ('noisy', 'clean'))
  image_ops.write_image(paths[0], noisy)
  image_ops.write_image(paths[1], clean)
  return paths


def page_message(error: Exception, name: str) -> str:
  """The one line the page shows for a user error with upload `name`."""
  if isinstance(error, image_ops.ImageReadError):
    return (f'{name} could not be read: the file is empty, truncated or not a PNG, JPEG or TIFF '
            'image. Export it again and upload the new file.')
  return str(error)


def compare(restored: np.ndarray, reference: np.ndarray) -> dict:
  """PSNR/SSIM of a restored image (uint8/uint16 HWC) against a clean one of the same size, in
  the project's convention (fixed peak) and the official code's (8-bit values as it reads them)."""
  if reference.shape != restored.shape:
    raise errors.InvalidInputError(
        f'the reference is {reference.shape[1]}x{reference.shape[0]} but the image is '
        f'{restored.shape[1]}x{restored.shape[0]}: upload the clean version of the same photo.')
  x, y = image_ops.to_float32(restored), image_ops.to_float32(reference)
  official = (restored, reference) if restored.dtype == np.uint8 else (x, y)
  return {'psnr': float(metrics.psnr(x, y, data_range=1.0)),
          'ssim': float(metrics.ssim(x, y, data_range=1.0)),
          'psnr_official': metrics.psnr_as_official(*official),
          'ssim_official': metrics.ssim_as_official(*official)}


def restore_uploads(predictor, uploads: Sequence[str], references: Sequence[str],
                    settings: Settings, out_dir: str, *, max_pixels: Optional[int],
                    progress: Optional[Progress] = None) -> List[PageResult]:
  """Restores uploaded files into `out_dir` as restored-<n>.png, one at a time.

  Args:
    predictor: a `Predictor` (its options are replaced by `settings`).
    uploads: the uploaded files' paths; their base names label the results.
    references: none, or one clean image per upload, in the same order.
    settings: the page's options.
    out_dir: a folder of this restore (`Workspace.new_result_dir`).
    max_pixels: refuse images larger than this before decoding them.
    progress: `progress(fraction, text)` over the images' tiles.

  Returns:
    One `PageResult` per upload.

  Raises:
    errors.UserError: a message for the page, naming the upload.
  """
  if not uploads:
    raise errors.InvalidInputError('Upload an image first (PNG, JPEG or TIFF), or use the sample.')
  if references and len(references) != len(uploads):
    raise errors.InvalidInputError(f'{len(references)} reference(s) for {len(uploads)} image(s): '
                                   'upload one clean reference per image, in the same order.')
  restore_fn = functools.partial(predictor, **settings.options())
  results = []
  for n, path in enumerate(uploads):
    name = os.path.basename(path)
    report = None
    if progress:
      report = lambda done, total, n=n, name=name: progress(
          (n + done / total) / len(uploads), f'{name}: tile {done} of {total}')
    out = os.path.join(out_dir, f'restored-{n + 1}.png')
    try:
      done = restore.restore_file(restore_fn, path, out, max_pixels=max_pixels, name=name,
                                  progress=report)
      results.append(_page_result(done, name, out_dir, n,
                                  references[n] if references else None))
    except errors.UserError as e:
      logging.info('Refused %s: %s', name, e)
      raise errors.InvalidInputError(page_message(e, name)) from None
  return results


def _page_result(done: restore.Restored, name: str, out_dir: str, n: int,
                 reference: Optional[str]) -> PageResult:
  """The page's record of one restored file: writes the input's 8-bit preview, compares."""
  before = os.path.join(out_dir, f'input-{n + 1}.png')
  lq = done.lq  # 16 bits are shown as 8 (rounded); no float copy of a large photo.
  image_ops.write_image(before, lq if lq.dtype == np.uint8 else
                        ((lq.astype(np.uint32) + 128) // 257).astype(np.uint8))
  scores = None
  if reference:
    try:
      scores = compare(done.restored, image_ops.read_image(reference))
    except errors.UserError as e:
      raise errors.InvalidInputError(
          f'Reference {os.path.basename(reference)}: {page_message(e, "it")}') from None
  return PageResult(name, done.path, before, done.seconds, done.lq.shape,
                    8 * done.lq.dtype.itemsize, scores)


def summary_markdown(results: Sequence[PageResult]) -> str:
  """The page's text under the comparison: size, bit depth and time of each image, and the
  metrics where a reference was given."""
  lines = ['| image | size | bits | time |', '|---|---|---|---|']
  lines += [f'| {r.name} | {r.shape[1]}x{r.shape[0]} | {r.bit_depth} | {r.seconds:.1f} s |'
            for r in results]
  scored = [r for r in results if r.metrics]
  if scored:
    lines += ['', '| image | PSNR | SSIM | PSNR (official) | SSIM (official) |',
              '|---|---|---|---|---|']
    lines += [f'| {r.name} | {r.metrics["psnr"]:.2f} dB | {r.metrics["ssim"]:.4f} | '
              f'{r.metrics["psnr_official"]:.2f} dB | {r.metrics["ssim_official"]:.4f} |'
              for r in scored]
    lines.append('\nPSNR/SSIM: fixed peak, per-channel SSIM. Official: as HINet\'s code (peak '
                 'guessed from the output, 3-D SSIM).')
  return '\n'.join(lines)
