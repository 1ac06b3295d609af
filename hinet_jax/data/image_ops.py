"""Numpy image operations and image I/O shared by the data pipeline, inference and the tests.

Images are HWC numpy arrays, RGB. Reading: 8-bit files give uint8 and 16-bit ones uint16;
grayscale is replicated to 3 channels, alpha dropped (not composited), palettes expanded; JPEG EXIF
orientation is ignored, since paired datasets are pixel-aligned as stored. PNG goes through libpng
(`imagecodecs`: Pillow truncates 16-bit colour PNGs), TIFF through `tifffile`, the rest Pillow.
"""

import io
import os
from typing import Tuple, Union

import imagecodecs
import numpy as np
from PIL import Image

from hinet_jax import errors
from hinet_jax import files

Size = Union[int, Tuple[int, int]]  # A crop size: square, or (h, w).

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.npy')
# A raw (H, W[, 3]) uint8/uint16 array is memory-mapped, not decoded: a crop reads only its window,
# which keeps a fast accelerator fed (bench/README.md, input pipeline).
ARRAY_EXTENSION = '.npy'
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# imagecodecs' fast setting (as OpenCV's): much faster than zlib level 6 at nearly its size
# (bench/README.md, image_io.py).
_PNG_ENCODE_ARGS = dict(level=imagecodecs.PNG.COMPRESSION.SPEED,
                        strategy=imagecodecs.PNG.STRATEGY.RLE, filter=imagecodecs.PNG.FILTER.SUB)


class ImageReadError(errors.UserError, OSError):
  """An image file is missing, unreadable, truncated or of an unsupported kind."""


def is_image_file(path: files.PathLike) -> bool:
  """Whether `path` has one of IMAGE_EXTENSIONS (any case)."""
  return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def read_image(path: files.PathLike) -> np.ndarray:
  """Reads an image file as (H, W, 3) uint8 or uint16 RGB, by the rule above.

  Args:
    path: PNG, JPEG, BMP, TIFF or WebP, local or `gs://...`; or a raw (H, W[, 3]) uint8/uint16
      `.npy`, memory-mapped read-only when local.

  Raises:
    ImageReadError: the file is missing, unreadable or truncated; the message names it.
  """
  path = os.fspath(path)
  if path.lower().endswith(ARRAY_EXTENSION):
    return _read_array(path)
  try:
    data = files.read_bytes(path)
    # PNG by content, whatever the extension says.
    if data.startswith(_PNG_SIGNATURE):
      x = imagecodecs.png_decode(data)
    elif path.lower().endswith(('.tif', '.tiff')):
      x = _read_tiff(data)
    else:
      x = _read_with_pillow(data)
  except ImageReadError as e:
    raise ImageReadError(f'Cannot read image {path}: {e}') from None
  except FileNotFoundError:
    raise ImageReadError(f'Cannot read image {path}: the file does not exist.') from None
  except Image.UnidentifiedImageError:
    raise ImageReadError(
        f'Cannot read image {path}: its content is not PNG, JPEG, BMP, TIFF or WebP (the file is '
        'damaged or not an image): replace or delete it.') from None
  except (OSError, ValueError, SyntaxError, RuntimeError) as e:  # PngError is a RuntimeError.
    raise ImageReadError(
        f'Cannot read image {path}: {type(e).__name__}: {e}. The file is unreadable or '
        'truncated: re-download or re-extract it, or delete it (or use '
        "on_error='skip' to skip such pairs).") from e
  return to_rgb(x)


def _read_array(path: str) -> np.ndarray:
  """A raw .npy image, memory-mapped when it is local and already (H, W, 3)."""
  try:
    if files.is_local(path):
      x = np.load(path, mmap_mode='r', allow_pickle=False)
    else:
      x = np.load(io.BytesIO(files.read_bytes(path)), allow_pickle=False)
  except errors.UserError:
    raise
  except (OSError, ValueError) as e:
    raise ImageReadError(
        f'Cannot read image {path}: {type(e).__name__}: {e}. Expected a .npy array written by '
        'numpy.save (or prepare_sidd --format=npy); re-create or delete the file.') from e
  if x.dtype not in (np.uint8, np.uint16) or x.ndim not in (2, 3) or (
      x.ndim == 3 and x.shape[-1] not in (1, 3)):
    raise ImageReadError(
        f'Cannot read image {path}: a .npy image must be (H, W, 3) or (H, W) uint8 or uint16, '
        f'got {x.shape} {x.dtype}; save it as such (e.g. np.round(img * 255).astype(np.uint8)).')
  if x.ndim == 3 and x.shape[-1] == 3 and x.flags.c_contiguous:
    return x
  return to_rgb(np.asarray(x))


def _read_with_pillow(data: bytes) -> np.ndarray:
  """Decodes 8-bit images (any Pillow format) and 16-bit grayscale ones."""
  with Image.open(io.BytesIO(data)) as im:
    im.load()  # Forces a full decode, so truncated files fail here.
    if im.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
      x = np.asarray(im)
      if x.dtype != np.uint16:
        if x.min() < 0 or x.max() > 65535:
          raise ImageReadError(f'32-bit integer image ({im.mode}) is not supported')
        x = x.astype(np.uint16)
      return x
    if im.mode == 'F':
      raise ImageReadError('floating-point images are not supported; save as 8/16-bit')
    if im.mode in ('RGB', 'RGBA', 'L', 'LA'):
      return np.asarray(im)
    # Palette, bilevel, CMYK, YCbCr...: let Pillow expand to RGB(A).
    return np.asarray(im.convert('RGBA' if 'transparency' in im.info else 'RGB'))


def _read_tiff(data: bytes) -> np.ndarray:
  """Decodes TIFF with tifffile; keeps 16-bit."""
  import tifffile  # pylint: disable=g-import-not-at-top
  x = tifffile.imread(io.BytesIO(data))
  if x.dtype not in (np.uint8, np.uint16):
    raise ImageReadError(f'TIFF dtype {x.dtype} is not supported; use uint8 or uint16')
  return x


def to_rgb(x: np.ndarray) -> np.ndarray:
  """The grayscale/alpha rule: (H, W) or (H, W, 1|2|3|4) -> (H, W, 3)."""
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3 or x.shape[-1] not in (1, 2, 3, 4):
    raise ImageReadError(f'unsupported image shape {x.shape}')
  if x.shape[-1] in (2, 4):
    x = x[..., :-1]  # Drop alpha.
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  return np.ascontiguousarray(x)


def encode_png(x: np.ndarray, bit_depth: int = 8) -> bytes:
  """The PNG file of an (H, W[, 3]) image; dtypes and `bit_depth` as in `write_image`."""
  x = quantize(x, bit_depth)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  return imagecodecs.png_encode(np.ascontiguousarray(x), **_PNG_ENCODE_ARGS)


_QUANTIZE_ROWS = 256  # Rows rounded at a time: the float temporaries stay small on a large photo.


def quantize(x: np.ndarray, bit_depth: int = 8) -> np.ndarray:
  """uint8/uint16 pass through; float [0, 1] is clipped and rounded to `bit_depth` (8 or 16)
  bits, a band of rows at a time."""
  x = np.asarray(x)
  if x.dtype in (np.uint8, np.uint16):
    return x
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f'write_image expects uint8, uint16 or float in [0, 1], got {x.dtype}')
  if bit_depth not in (8, 16):
    raise ValueError(f'bit_depth must be 8 or 16, got {bit_depth}')
  peak = 255 if bit_depth == 8 else 65535
  out = np.empty(x.shape, np.uint8 if bit_depth == 8 else np.uint16)
  for r in range(0, max(x.shape[0], 1), _QUANTIZE_ROWS):
    out[r:r + _QUANTIZE_ROWS] = np.round(np.clip(x[r:r + _QUANTIZE_ROWS], 0.0, 1.0) * peak)
  return out


def write_image(path: files.PathLike, x: np.ndarray, bit_depth: int = 8) -> None:
  """Writes an (H, W[, 3]) image whole (`files.write_bytes`), in the format of the extension.

  uint8 gives an 8-bit file, uint16 a 16-bit .png or .npy; float in [0, 1] is clipped and rounded
  to `bit_depth` (8 or 16) bits. An existing file is replaced in one step: callers decide whether
  that is wanted. `path` may be `gs://...`; parent folders are created.
  """
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  x = quantize(x, bit_depth)
  if x.dtype == np.uint16 and ext not in ('.png', ARRAY_EXTENSION):
    raise errors.InvalidInputError(
        f'16-bit images can only be written as .png or .npy, not {path}')
  if ext not in ('.png', ARRAY_EXTENSION) and ext not in Image.registered_extensions():
    raise errors.InvalidInputError(f'Cannot write {path}: unknown image extension {ext!r}; use '
                                   f'one of {", ".join(IMAGE_EXTENSIONS)}.')
  files.write_bytes(path, _encode(x, ext))


def _encode(x: np.ndarray, ext: str) -> bytes:
  """The file contents of image `x` in the format of extension `ext`."""
  if ext == '.png':
    return encode_png(x)
  buffer = io.BytesIO()
  if ext == ARRAY_EXTENSION:
    np.save(buffer, np.ascontiguousarray(x), allow_pickle=False)
  else:
    Image.fromarray(x).save(buffer, format=Image.registered_extensions()[ext], quality=95)
  return buffer.getvalue()


def to_float32(x: np.ndarray) -> np.ndarray:
  """An image as float32 in [0, 1]: uint8 / 255, uint16 / 65535, float cast only."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x.astype(np.float32) * np.float32(1 / 255)
  if x.dtype == np.uint16:
    return x.astype(np.float32) * np.float32(1 / 65535)
  if np.issubdtype(x.dtype, np.floating):
    return x.astype(np.float32)
  raise ValueError(f'to_float32 expects uint8, uint16 or float, got {x.dtype}')


def pair_size(size: Size) -> Tuple[int, int]:
  """An int or (h, w) crop size as (h, w)."""
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def paired_random_crop(lq: np.ndarray, gt: np.ndarray, size: Size,
                       rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  """The same random `size` window of an (H, W, C) degraded/clean pair, as views.

  Raises:
    ValueError: the sizes differ or the crop is larger than the image.
  """
  ch, cw = pair_size(size)
  h, w = lq.shape[:2]
  if gt.shape[:2] != (h, w):
    raise ValueError(f'lq is {h}x{w} but gt is {gt.shape[0]}x{gt.shape[1]}: the pair is '
                     'misaligned')
  if ch > h or cw > w:
    raise ValueError(f'crop {ch}x{cw} is larger than the image ({h}x{w}): lower '
                     'crop_size or remove images smaller than the crop')
  top = int(rng.integers(0, h - ch + 1))
  left = int(rng.integers(0, w - cw + 1))
  return lq[top:top + ch, left:left + cw], gt[top:top + ch, left:left + cw]


def dihedral(x: np.ndarray, k: int, xp=np) -> np.ndarray:
  """Symmetry k of the square on axes (-3, -2) = (H, W), a view where possible.

  k = 0..3 rotates by k*90 degrees counter-clockwise; k = 4..7 flips upside down first. `xp`:
  the array module (`jax.numpy` inside a traced function).
  """
  k = int(k)
  if not 0 <= k < 8:
    raise ValueError(f'dihedral k must be in 0..7, got {k}')
  if k >= 4:
    x = xp.flip(x, axis=-3)
  return xp.rot90(x, k % 4, axes=(-3, -2))


def inverse_dihedral(x: np.ndarray, k: int, xp=np) -> np.ndarray:
  """Undoes `dihedral(x, k, xp)`."""
  k = int(k)
  if not 0 <= k < 8:
    raise ValueError(f'dihedral k must be in 0..7, got {k}')
  x = xp.rot90(x, -(k % 4), axes=(-3, -2))
  return xp.flip(x, axis=-3) if k >= 4 else x


def sample_dihedral(rng: np.random.Generator, mode: str) -> int:
  """Draws the dihedral k of one training pair.

  `mode`: 'dihedral' (k uniform in 0..7, as BasicSR's hflip+vflip+rot90), 'dihedral_half' (the
  official SIDD scheme: identity half the time, else one of the 7 others, HINet
  basicsr/data/transforms.py:227) or 'none' (0).
  """
  if mode == 'dihedral':
    return int(rng.integers(0, 8))
  if mode == 'dihedral_half':
    return 0 if rng.integers(0, 2) == 0 else int(rng.integers(1, 8))
  if mode == 'none':
    return 0
  raise ValueError(f"augment must be 'dihedral', 'dihedral_half' or 'none', got {mode!r}")


def pad_to_multiple(x: np.ndarray, m: int,
                    mode: str = 'reflect') -> Tuple[np.ndarray, Tuple[int, int]]:
  """Pads the bottom/right of an HWC or NHWC image (np.pad `mode`) to sides that are multiples of m.

  HINet needs multiples of 2**(depth-1). Returns (padded, (h, w)); crop back with
  `y[..., :h, :w, :]`.
  """
  h, w = x.shape[-3], x.shape[-2]
  ph, pw = (-h) % m, (-w) % m
  if ph == 0 and pw == 0:
    return x, (h, w)
  widths = [(0, 0)] * x.ndim
  widths[-3], widths[-2] = (0, ph), (0, pw)
  return np.pad(x, widths, mode=mode), (h, w)


def motion_blur_kernel(length: float, angle_deg: float) -> np.ndarray:
  """A (k, k) float32 line kernel of `length` pixels at `angle_deg`, k odd, summing to 1."""
  size = int(length) | 1
  kernel = np.zeros((size, size), np.float32)
  c = size // 2
  t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * size)
  rows = np.round(c - t * np.sin(np.deg2rad(angle_deg))).astype(int)
  cols = np.round(c + t * np.cos(np.deg2rad(angle_deg))).astype(int)
  kernel[rows, cols] = 1.0
  return kernel / kernel.sum()


def convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """2-D `kernel` over each channel of float HWC `x`, reflect-padded to the same size."""
  from scipy import signal  # pylint: disable=g-import-not-at-top
  ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
  padded = np.pad(x, ((ph, ph), (pw, pw), (0, 0)), mode='reflect')
  return signal.fftconvolve(padded, kernel[..., None], mode='valid', axes=(0, 1)).astype(np.float32)
