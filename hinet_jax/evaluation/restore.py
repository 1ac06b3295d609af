"""One image file in, one restored PNG of its bit depth out: the path of `eval.py --input` and of
the restore page (`hinet_jax.web`), so that the two cannot drift."""

import dataclasses
import os
import time
from typing import Callable, Optional, Tuple

import numpy as np
from PIL import Image

from hinet_jax import errors
from hinet_jax import files
from hinet_jax.data import image_ops
from hinet_jax.evaluation import inference

DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32
DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_BATCH_SIZE = 8  # Tiles per call.

# (HWC image, progress=..., bits=8|16) -> that many bits' HWC image: a `Predictor`.
RestoreFn = Callable[..., np.ndarray]


class ImageTooLargeError(errors.InvalidInputError):
  """An image has more pixels than the limit it is restored under."""


@dataclasses.dataclass
class Restored:
  """One restored file: `path` (the PNG written), `lq` (the input as read, uint8/uint16 RGB),
  `restored` (the output as written, same dtype and shape) and `seconds` (read to written)."""
  path: str
  lq: np.ndarray
  restored: np.ndarray
  seconds: float


def image_size(path: files.PathLike) -> Optional[Tuple[int, int]]:
  """(height, width) from the file's header alone, or None where the header does not say (the
  decode then reports what is wrong)."""
  path = os.fspath(path)
  if not files.is_local(path):
    return None
  if path.lower().endswith(image_ops.ARRAY_EXTENSION):
    try:
      return tuple(np.load(path, mmap_mode='r', allow_pickle=False).shape[:2])
    except (OSError, ValueError):
      return None
  try:
    with Image.open(path) as im:
      return im.height, im.width
  except Image.DecompressionBombError:  # Pillow's own ceiling, about 179 MP.
    return Image.MAX_IMAGE_PIXELS * 2 + 1, 1
  except (OSError, ValueError, SyntaxError):
    return None


def check_size(path: files.PathLike, max_pixels: Optional[int], name: Optional[str] = None):
  """Refuses an image over `max_pixels` (None: any size) before it is decoded.

  Raises:
    ImageTooLargeError: naming the image as `name` (default: its path).
  """
  size = image_size(path) if max_pixels else None
  if size and size[0] * size[1] > max_pixels:
    raise ImageTooLargeError(
        f'{name or path} has {size[0] * size[1] / 1e6:.1f} megapixels, more than the limit of '
        f'{max_pixels / 1e6:g}: reduce it, or raise the limit (--max_megapixels).')


def restore_file(restore_fn: RestoreFn, path: files.PathLike, out_path: files.PathLike, *,
                 max_pixels: Optional[int] = None, name: Optional[str] = None,
                 progress: Optional[inference.ProgressFn] = None) -> Restored:
  """Restores the image at `path` into the PNG `out_path`, at the input's bit depth and size
  (grayscale replicated to RGB, alpha dropped: `image_ops.read_image`).

  Args:
    restore_fn: `restore_fn(image, progress=..., bits=...)`: a `Predictor`, or one with its
      options bound (`bits`: the output's, rounded as it is merged).
    path: PNG, JPEG, TIFF, ... (local or gs://).
    out_path: the PNG to write (replaced whole, or not at all).
    max_pixels: refuse larger images before decoding them (None: any size).
    name: how messages name the image (default: its path).
    progress: `progress(done, total)` over the tiles.

  Returns:
    The `Restored` record.

  Raises:
    ImageTooLargeError, image_ops.ImageReadError: the messages name the image as `name`.
  """
  start = time.perf_counter()
  check_size(path, max_pixels, name)
  try:
    lq = image_ops.read_image(path)
  except image_ops.ImageReadError as e:
    if not name:
      raise
    raise image_ops.ImageReadError(str(e).replace(os.fspath(path), name)) from None
  restored = restore_fn(lq, progress=progress, bits=16 if lq.dtype == np.uint16 else 8)
  image_ops.write_image(out_path, restored)
  return Restored(os.fspath(out_path), lq, restored, time.perf_counter() - start)
