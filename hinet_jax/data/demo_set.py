"""The demo set: scikit-image's bundled photographs with a seeded synthetic degradation.

Nothing is downloaded. Train and val use disjoint photographs, and item i of a split is degraded
by a generator seeded with (seed, split, i), so every read of an item gives the same pixels.
"""

import functools
import io
from typing import List, Optional, Sequence, Tuple

import numpy as np

from hinet_jax import errors
from hinet_jax.data import image_ops
from hinet_jax.data import paired_files

# camera and the textures are grayscale, replicated to RGB; 'cat' is 'chelsea' again, left out.
DEMO_TRAIN_IMAGES = ('astronaut', 'chelsea', 'rocket', 'immunohistochemistry', 'retina',
                     'stereo_motorcycle', 'brick', 'grass', 'gravel', 'moon')
DEMO_VAL_IMAGES = ('coffee', 'camera', 'coins', 'hubble_deep_field')  # 16 tiles of 256.
Box = Tuple[int, int, int]  # (top, left, size) of a val tile.


@functools.lru_cache(maxsize=None)
def load_demo_image(name: str) -> np.ndarray:
  """`skimage.data.<name>()` as a read-only (H, W, 3) uint8 array, cached per process."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  x = getattr(skimage.data, name)()
  if isinstance(x, tuple):  # stereo_motorcycle -> (left, right, disparity): keep left.
    x = x[0]
  x = image_ops.to_rgb(np.asarray(x, np.uint8))
  x.flags.writeable = False
  return x


def degrade(clean: np.ndarray, rng: np.random.Generator, degradation: str = 'noise',
            sigma: float = 25.0, blur_length: int = 15, jpeg_quality: int = 30) -> np.ndarray:
  """A synthetic degradation of a clean (H, W, 3) uint8 image, as uint8.

  Args:
    clean: the image.
    rng: the same generator state gives the same output.
    degradation: 'noise' (additive Gaussian), 'blur' (motion blur at a random angle) or 'jpeg'.
    sigma: noise standard deviation on the 0-255 scale.
    blur_length: motion blur length in pixels.
    jpeg_quality: JPEG quality 1-95.

  Returns:
    The degraded (H, W, 3) uint8 image.
  """
  if degradation == 'noise':
    noisy = clean.astype(np.float32) + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
  if degradation == 'blur':
    kernel = image_ops.motion_blur_kernel(blur_length, rng.uniform(0.0, 180.0))
    return np.clip(np.round(image_ops.convolve(clean.astype(np.float32), kernel)), 0, 255
                   ).astype(np.uint8)
  if degradation == 'jpeg':
    from PIL import Image  # pylint: disable=g-import-not-at-top
    buf = io.BytesIO()
    Image.fromarray(clean).save(buf, format='JPEG', quality=int(jpeg_quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB'))
  raise errors.InvalidInputError(
      f"degradation must be 'noise', 'blur' or 'jpeg', got {degradation!r}")


def _tiles(shape: Sequence[int], size: Optional[int]) -> List[Optional[Box]]:
  """The non-overlapping size x size tiles of an image (top-left corners), or [None]: whole."""
  if size is None:
    return [None]
  h, w = shape[:2]
  return [(top, left, size) for top in range(0, h - size + 1, size)
          for left in range(0, w - size + 1, size)]


class DemoSource:
  """Real photographs from scikit-image, degraded on the fly.

  train: `repeats` passes over the whole photos, each with its own draw (the pipeline crops them).
  val: the `val_crop` tiles of each val photo (equal-sized, for `create_eval_batches`), or whole
  photos if val_crop=None. Train items are kept once made: degrading a photo for each epoch's
  small crop costs more than the demo's train step (bench/README.md).
  """

  def __init__(self, split: str = 'train', degradation: str = 'noise', sigma: float = 25.0,
               seed: int = 0, repeats: int = 16, val_crop: Optional[int] = 256,
               blur_length: int = 15, jpeg_quality: int = 30,
               images: Optional[Sequence[str]] = None):
    """Lists the items; photos load on first use.

    Args:
      split: 'train' or 'val'.
      degradation: 'noise', 'blur' or 'jpeg'; sigma, blur_length, jpeg_quality: see `degrade`.
      seed: degradation seed.
      repeats: train: each photo appears this many times per epoch.
      val_crop: val: tile size, or None for whole photos.
      images: the photo names of this split, instead of DEMO_TRAIN_IMAGES / DEMO_VAL_IMAGES.
    """
    if split not in ('train', 'val'):
      raise errors.InvalidInputError(f"DemoSource split must be 'train' or 'val', got {split!r}")
    degrade(np.zeros((8, 8, 3), np.uint8), np.random.default_rng(0), degradation)  # Validates.
    self.split, self.seed = split, int(seed)
    self.images = tuple(images or (DEMO_TRAIN_IMAGES if split == 'train' else DEMO_VAL_IMAGES))
    self.degrade_kwargs = dict(degradation=degradation, sigma=float(sigma),
                               blur_length=blur_length, jpeg_quality=jpeg_quality)
    self._cache = {}
    if split == 'train':
      self.items = [(name, None) for _ in range(int(repeats)) for name in self.images]
    else:
      self.items = [(name, box) for name in self.images
                    for box in _tiles(load_demo_image(name).shape, val_crop)]

  def __len__(self) -> int:
    return len(self.items)

  def __getstate__(self) -> dict:  # Worker processes start with an empty cache.
    return {**self.__dict__, '_cache': {}}

  def __getitem__(self, index: int) -> paired_files.Item:
    index = range(len(self))[index]  # IndexError out of range, like a list
    if index in self._cache:
      return self._cache[index]
    item = self._make(index)
    if self.split == 'train':
      for key in ('lq', 'gt'):
        item[key].flags.writeable = False  # shared by every later read
      self._cache[index] = item
    return item

  def _make(self, index: int) -> paired_files.Item:
    name, box = self.items[index]
    clean = load_demo_image(name)
    label = name
    if box is not None:
      top, left, size = box
      clean = clean[top:top + size, left:left + size]
      label = f'{name}_{top}_{left}'
    elif self.split == 'train':
      label = f'{name}_r{index // len(self.images)}'
    # The split is part of the seed so train and val never share a noise draw.
    rng = np.random.default_rng([self.seed, 0 if self.split == 'train' else 1, index])
    return {'lq': degrade(clean, rng, **self.degrade_kwargs), 'gt': np.array(clean), 'name': label}
