"""Training pairs from clean photos: degradations synthesized on the fly, inside the grain pipeline.

`PhotoFolderSource` lists any folder of clean images. In training it yields each clean photo, and
the pipeline (`input_pipeline`) cuts the crop with `SynthesizeCrop`, a grain RandomMap: crop,
dihedral, then a chain of degradations, all drawn from grain's per-record generator, so a batch is
a function of (seed, step) and a resumed run replays it. Validation items are degraded in the
source, seeded by (seed, index), so every read gives the same pixels.

Degradations (float32 HWC in [0, 1], each parameter drawn uniformly from its (lo, hi) range):
'noise' (Gaussian, sigma on the 0-255 scale), 'poisson' (signal-dependent shot noise at `peak`
photons for white, drawn log-uniformly, plus Gaussian read noise), 'gaussian_blur' (kernel
sigma in pixels), 'motion_blur' (a line of `length` pixels at a random angle), 'jpeg' (quality).
"""

import collections
import dataclasses
import io
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import grain
import numpy as np

from hinet_jax import errors
from hinet_jax import files
from hinet_jax.data import image_ops
from hinet_jax.data import paired_files

Range = Tuple[float, float]
RangeLike = Union[float, Sequence[float]]
ORDERS = ('given', 'random')


def _uniform(rng: np.random.Generator, r: Range) -> float:
  return float(r[0]) if r[0] == r[1] else float(rng.uniform(*r))


def gaussian_noise(x: np.ndarray, rng: np.random.Generator, sigma: Range) -> np.ndarray:
  """Additive white Gaussian noise, sigma (0-255 scale) drawn from the range."""
  s = _uniform(rng, sigma) / 255.0
  return x + rng.normal(0.0, s, x.shape).astype(np.float32)


def poisson_noise(x: np.ndarray, rng: np.random.Generator, peak: Range,
                  read_sigma: Range) -> np.ndarray:
  """Shot noise (Poisson counts at `peak` photons for 1.0) plus Gaussian read noise (0-255)."""
  p = math.exp(_uniform(rng, (math.log(peak[0]), math.log(peak[1]))))
  shot = rng.poisson(np.clip(x, 0.0, 1.0) * p).astype(np.float32) / p
  return shot + rng.normal(0.0, _uniform(rng, read_sigma) / 255.0, x.shape).astype(np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
  """An isotropic (k, k) Gaussian kernel out to 3 sigma, summing to 1."""
  radius = max(1, math.ceil(3 * sigma))
  t = np.arange(-radius, radius + 1, dtype=np.float32)
  g = np.exp(-0.5 * np.square(t / max(sigma, 1e-3)))
  kernel = np.outer(g, g)
  return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(x: np.ndarray, rng: np.random.Generator, sigma: Range) -> np.ndarray:
  return image_ops.convolve(x, gaussian_kernel(_uniform(rng, sigma)))


def motion_blur(x: np.ndarray, rng: np.random.Generator, length: Range) -> np.ndarray:
  kernel = image_ops.motion_blur_kernel(max(1.0, _uniform(rng, length)), rng.uniform(0.0, 180.0))
  return image_ops.convolve(x, kernel)


def jpeg(x: np.ndarray, rng: np.random.Generator, quality: Range) -> np.ndarray:
  """JPEG at a quality drawn from the range (8-bit, as a saved photo)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  q = int(round(_uniform(rng, quality)))
  buf = io.BytesIO()
  Image.fromarray(image_ops.quantize(x)).save(buf, format='JPEG', quality=q)
  return image_ops.to_float32(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB')))


def _as_range(value: RangeLike, name: str, low: float) -> Range:
  """(lo, hi) from a number (fixed) or a pair, with low <= lo <= hi."""
  pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
  if len(pair) != 2 or not low <= float(pair[0]) <= float(pair[1]):
    raise errors.InvalidInputError(
        f'{name} must be a number or a range (lo, hi) with {low} <= lo <= hi, got {value!r}')
  return float(pair[0]), float(pair[1])


@dataclasses.dataclass(frozen=True)
class Degradations:
  """A chain of degradations, applied in the given or a random order per example.

  Attributes:
    names: the chain, each one of DEGRADATIONS.
    order: 'given' (as listed) or 'random' (a fresh permutation per example).
    noise_sigma: Gaussian noise sigma range, 0-255 scale: (25, 25) fixed, (0, 55) blind.
    poisson_peak: photons for white, drawn log-uniformly (smaller is noisier).
    read_sigma: the Gaussian read noise added to shot noise, 0-255 scale.
    blur_sigma: Gaussian blur kernel sigma range, pixels.
    motion_length: motion blur length range, pixels.
    jpeg_quality: JPEG quality range, 1-95.
  """

  names: Tuple[str, ...] = ('noise',)
  order: str = 'given'
  noise_sigma: Range = (25.0, 25.0)
  poisson_peak: Range = (30.0, 300.0)
  read_sigma: Range = (0.0, 5.0)
  blur_sigma: Range = (0.5, 3.0)
  motion_length: Range = (3.0, 21.0)
  jpeg_quality: Range = (30.0, 95.0)

  def _op(self, name: str) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    return {'noise': lambda x, rng: gaussian_noise(x, rng, self.noise_sigma),
            'poisson': lambda x, rng: poisson_noise(x, rng, self.poisson_peak, self.read_sigma),
            'gaussian_blur': lambda x, rng: gaussian_blur(x, rng, self.blur_sigma),
            'motion_blur': lambda x, rng: motion_blur(x, rng, self.motion_length),
            'jpeg': lambda x, rng: jpeg(x, rng, self.jpeg_quality)}[name]

  @property
  def margin(self) -> int:
    """Pixels a blur reads beyond a crop: degrading that much more, then cutting it away, keeps
    the crop free of padding artefacts."""
    radius = {'gaussian_blur': max(1, math.ceil(3 * self.blur_sigma[1])),
              'motion_blur': (int(self.motion_length[1]) | 1) // 2}
    return max([radius.get(name, 0) for name in self.names], default=0)

  def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The degraded float32 image of float32 HWC `clean`, quantized to 8 bits as saved."""
    names = list(self.names)
    if self.order == 'random':
      names = [names[i] for i in rng.permutation(len(names))]
    x = clean
    for name in names:
      x = self._op(name)(x, rng)
    return image_ops.to_float32(image_ops.quantize(x))


DEGRADATIONS = ('noise', 'poisson', 'gaussian_blur', 'motion_blur', 'jpeg')


def make_degradations(names: Union[str, Sequence[str]] = 'noise', order: str = 'given',
                      noise_sigma: RangeLike = 25.0, poisson_peak: RangeLike = (30.0, 300.0),
                      read_sigma: RangeLike = (0.0, 5.0), blur_sigma: RangeLike = (0.5, 3.0),
                      motion_length: RangeLike = (3.0, 21.0),
                      jpeg_quality: RangeLike = (30.0, 95.0)) -> Degradations:
  """`Degradations` from config values ('noise,jpeg' or a list; numbers or (lo, hi) ranges),
  checked: an unknown name or order, or a bad range, is an InvalidInputError naming the fix."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(',') if n.strip()]
  unknown = [n for n in names if n not in DEGRADATIONS]
  if unknown or not names:
    raise errors.InvalidInputError(
        f'Unknown degradation(s) {unknown or names!r}: use a comma-separated chain of '
        f'{", ".join(DEGRADATIONS)}, e.g. degradations=motion_blur,noise,jpeg')
  if order not in ORDERS:
    raise errors.InvalidInputError(f'degradation order must be one of {ORDERS}, got {order!r}')
  return Degradations(
      tuple(names), order, _as_range(noise_sigma, 'noise_sigma', 0.0),
      _as_range(poisson_peak, 'poisson_peak', 1e-3), _as_range(read_sigma, 'read_sigma', 0.0),
      _as_range(blur_sigma, 'blur_sigma', 0.0), _as_range(motion_length, 'motion_length', 1.0),
      _as_range(jpeg_quality, 'jpeg_quality', 1.0))


def _pad_to(x: np.ndarray, h: int, w: int) -> np.ndarray:
  """`x` padded at the bottom/right to at least (h, w), edge pixel repeated (as paired crops)."""
  ph, pw = max(0, h - x.shape[0]), max(0, w - x.shape[1])
  return np.pad(x, ((0, ph), (0, pw), (0, 0)), mode='symmetric') if ph or pw else x


@dataclasses.dataclass(frozen=True)
class SynthesizeCrop(grain.transforms.RandomMap):
  """A clean photo -> a float32 {'lq', 'gt'} training crop: random crop with the degradations'
  margin, dihedral transform, degradation, margin cut away.

  Attributes:
    crop_size: int or (h, w).
    augment: one of `input_pipeline.AUGMENT_MODES` (`image_ops.sample_dihedral`).
    degradations: the chain.
  """

  crop_size: image_ops.Size
  augment: str
  degradations: Degradations

  def random_map(self, element: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
    k = image_ops.sample_dihedral(rng, self.augment)
    ch, cw = image_ops.pair_size(self.crop_size)
    m = self.degradations.margin
    h, w = (ch, cw) if k % 2 == 0 else (cw, ch)  # a quarter turn swaps H and W
    clean = _pad_to(element['gt'], h + 2 * m, w + 2 * m)
    top = int(rng.integers(0, clean.shape[0] - (h + 2 * m) + 1))
    left = int(rng.integers(0, clean.shape[1] - (w + 2 * m) + 1))
    clean = image_ops.to_float32(image_ops.dihedral(
        clean[top:top + h + 2 * m, left:left + w + 2 * m], k))
    lq = self.degradations(clean, rng)
    inner = (slice(m, clean.shape[0] - m), slice(m, clean.shape[1] - m))
    return {'lq': np.ascontiguousarray(lq[inner]), 'gt': np.ascontiguousarray(clean[inner])}


class _DecodedPhotos:
  """Decoded RGB photos by path, up to `max_bytes`: a crop needs the whole photo, decoded once
  rather than per crop (bench/README.md). Each process (or grain worker) fills its own; pickling
  drops the contents."""

  def __init__(self, max_bytes: int):
    self.max_bytes = max_bytes
    self._photos: collections.OrderedDict = collections.OrderedDict()

  def get(self, path: str) -> np.ndarray:
    if path in self._photos:
      self._photos.move_to_end(path)
      return self._photos[path]
    photo = image_ops.to_rgb(image_ops.read_image(path))
    photo.flags.writeable = False
    if photo.nbytes <= self.max_bytes:
      self._photos[path] = photo
      while sum(p.nbytes for p in self._photos.values()) > self.max_bytes:
        self._photos.popitem(last=False)
    return photo

  def __getstate__(self):
    return {'max_bytes': self.max_bytes, '_photos': collections.OrderedDict()}


class PhotoFolderSource:
  """Any folder of clean images as a source of synthesized (degraded, clean) pairs.

  train: each photo once per epoch, clean (lq is gt); `train_transform` makes the pairs in the
  pipeline. val: the `val_crop` tiles of each photo (smaller photos padded to one tile), or whole
  photos for val_crop=None, degraded here from a generator seeded by (seed, index).
  """

  def __init__(self, root: files.PathLike, split: str = 'train',
               degradations: Union[str, Sequence[str]] = 'noise', order: str = 'given',
               noise_sigma: RangeLike = 25.0, poisson_peak: RangeLike = (30.0, 300.0),
               read_sigma: RangeLike = (0.0, 5.0), blur_sigma: RangeLike = (0.5, 3.0),
               motion_length: RangeLike = (3.0, 21.0), jpeg_quality: RangeLike = (30.0, 95.0),
               seed: int = 0, val_crop: Optional[int] = 256, recursive: bool = False,
               cache_mb: int = 1024):
    """Lists the photos (read on access); the degradation arguments: see `make_degradations`.
    `cache_mb`: decoded photos kept per process, least recently used first out (0: none)."""
    if split not in ('train', 'val'):
      raise errors.InvalidInputError(f"photos split must be 'train' or 'val', got {split!r}")
    self.degradations = make_degradations(degradations, order, noise_sigma, poisson_peak,
                                          read_sigma, blur_sigma, motion_length, jpeg_quality)
    # A missing or empty folder is an error naming it (`list_images`).
    self.paths = list(paired_files.list_images(root, recursive=recursive).items())
    self.split, self.seed, self.val_crop = split, int(seed), val_crop
    self._cache = _DecodedPhotos(cache_mb * 2**20)
    self.items = [(i, None) for i in range(len(self.paths))]
    if split == 'val':
      self.items = [(i, box) for i, (_, path) in enumerate(self.paths)
                    for box in self._tiles(path)]

  def _tiles(self, path: str):
    if self.val_crop is None:
      return [None]
    h, w = image_ops.read_image(path).shape[:2]
    s = int(self.val_crop)
    return [(top, left) for top in range(0, max(h - s, 0) + 1, s)
            for left in range(0, max(w - s, 0) + 1, s)]

  def train_transform(self, crop_size: image_ops.Size, augment: str) -> SynthesizeCrop:
    """The pipeline's crop for this source (`input_pipeline.create_train_iter`)."""
    return SynthesizeCrop(crop_size, augment, self.degradations)

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, index: int) -> paired_files.Item:
    index = range(len(self))[index]  # IndexError out of range, like a list
    i, box = self.items[index]
    name, path = self.paths[i]
    clean = self._cache.get(path)
    if self.split == 'train':
      return {'lq': clean, 'gt': clean, 'name': name}
    if box is not None:
      s = int(self.val_crop)
      clean = _pad_to(clean, s, s)[box[0]:box[0] + s, box[1]:box[1] + s]
      name = f'{name}_{box[0]}_{box[1]}'
    rng = np.random.default_rng([self.seed, 1, index])
    lq = self.degradations(image_ops.to_float32(clean), rng)
    return {'lq': image_ops.quantize(lq), 'gt': image_ops.quantize(image_ops.to_float32(clean)),
            'name': name}
