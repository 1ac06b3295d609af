"""Random-access paired image sources for training and evaluation.

Every source has `__len__` and `__getitem__` (the grain RandomAccessDataSource
protocol) and returns `{'lq': HWC uint8|uint16 RGB, 'gt': same, 'name': str}`.
Sources keep only file paths (or, for the demo set, image names), so they
pickle cheaply into grain worker processes; pixels are read on access. Any
folder may hold raw `.npy` images instead of PNG/JPEG (`image_ops.read_image`):
those are memory-mapped, so a training crop reads only its window.

Layouts, as the official HINet/NAFNet preparation leaves them:
  * folders: `<root>/input/*` + `<root>/target/*`, matched by file stem.
  * SIDD-Medium: `<root>/Data/<scene>/<id>_NOISY_SRGB_<n>.PNG` + `..._GT_SRGB_...`.
    Cropped set: `<root>/train/input_crops` + `gt_crops` (`python -m hinet_jax.prepare_sidd`).
  * SIDD validation: ValidationNoisyBlocksSrgb.mat + ValidationGtBlocksSrgb.mat.
  * GoPro: `<root>/{train,test}/{input,target}` (or the raw `<seq>/{blur,sharp}`).
    Cropped set: `<root>/train/blur_crops` + `sharp_crops` (`python -m hinet_jax.prepare_gopro`).
  * REDS: `<root>/train/{train_blur_jpeg,train_sharp}/<seq>/<frame>`,
    `<root>/val/{val_blur_jpeg,val_sharp}/<seq>/<frame>` (or flattened `<seq>_<frame>`).
  * Rain13k: `<root>/train/{input,target}`, `<root>/test/<Test100|Rain100H|...>/{input,target}`.

Bad input fails with a message naming the file and the fix (a `hinet_jax.errors.UserError`, also a
ValueError or FileNotFoundError, which the command-line programs print without a traceback);
`on_error='skip'` turns per-pair read errors (unreadable file, size mismatch) into a logged,
counted skip (`__getitem__` returns None, which grain drops).
"""

import functools
import inspect
import io
import os

from absl import logging
import numpy as np

from hinet_jax import errors
from hinet_jax.data import image_ops

# The five deraining test sets of MPRNet/HINet, by their folder names.
RAIN13K_TEST_SETS = ('Test100', 'Rain100H', 'Rain100L', 'Test2800', 'Test1200')
SIDD_VAL_SHAPE = (40, 32, 256, 256, 3)
SIDD_VAL_KEYS = {'noisy': 'ValidationNoisyBlocksSrgb', 'gt': 'ValidationGtBlocksSrgb'}
# Photographs bundled with scikit-image (no download). camera and the textures
# are grayscale and replicated to RGB. 'cat' is left out: it is 'chelsea' again.
DEMO_TRAIN_IMAGES = ('astronaut', 'chelsea', 'rocket', 'immunohistochemistry', 'retina',
                     'stereo_motorcycle', 'brick', 'grass', 'gravel', 'moon')
DEMO_VAL_IMAGES = ('coffee', 'camera', 'coins', 'hubble_deep_field')  # 16 tiles of 256.
_MAX_LISTED = 20


def _short_list(names):
  """Formats at most _MAX_LISTED names for an error message."""
  names = sorted(names)
  more = f' ... and {len(names) - _MAX_LISTED} more' if len(names) > _MAX_LISTED else ''
  return ', '.join(names[:_MAX_LISTED]) + more


# ----------------------------------------------------------------------------
# File listing and pairing.


def list_images(folder, recursive=False):
  """Lists the images in a folder, keyed by path relative to it minus extension.

  Args:
    folder: directory to scan.
    recursive: also scan sub-folders (keys then contain '/').

  Returns:
    dict key -> absolute path, in sorted key order.

  Raises:
    errors.MissingPathError: the folder does not exist.
    errors.InvalidInputError: the folder holds no image, or two files share a key.
  """
  folder = os.path.abspath(os.fspath(folder))
  if not os.path.isdir(folder):
    raise errors.MissingPathError(
        f'Image folder {folder} does not exist: check the dataset root '
        'and the layout described in hinet_jax/data/datasets.py')
  found = {}
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    if not recursive:
      dirnames.clear()
    for fname in sorted(filenames):
      if not image_ops.is_image_file(fname):
        continue
      rel = os.path.relpath(os.path.join(dirpath, fname), folder)
      key = os.path.splitext(rel)[0].replace(os.sep, '/')
      if key in found:
        raise errors.InvalidInputError(
            f'Two images share the name {key!r} in {folder} '
            f'({os.path.basename(found[key])}, {fname}): keep one of them')
      found[key] = os.path.join(dirpath, fname)
  if not found:
    raise errors.InvalidInputError(
        f'Image folder {folder} contains no images with extensions '
        f'{", ".join(image_ops.IMAGE_EXTENSIONS)}: check the path, or extract '
        'the dataset there')
  return dict(sorted(found.items()))


def match_pairs(lq_files, gt_files, lq_dir='input', gt_dir='target'):
  """Pairs two `list_images` results by key; any unmatched key is an error.

  Args:
    lq_files: dict key -> degraded image path.
    gt_files: dict key -> clean image path.
    lq_dir: folder (or a label for it) named in the error message.
    gt_dir: folder (or a label for it) named in the error message.

  Returns:
    list of (lq_path, gt_path, name) sorted by name.

  Raises:
    errors.InvalidInputError: the key sets differ; the message lists the unmatched files (names
      with extensions) under the folder that lacks their partner.
  """
  only_lq = lq_files.keys() - gt_files.keys()
  only_gt = gt_files.keys() - lq_files.keys()
  if only_lq or only_gt:
    msg = [f'The images in {lq_dir} and {gt_dir} do not pair up by name (a pair is two files '
           'with the same name; the extensions may differ).']
    if only_lq:
      names = [_shown_name(lq_files[k], lq_dir) for k in only_lq]
      msg.append(f'In {lq_dir} but missing from {gt_dir}: {_short_list(names)}.')
    if only_gt:
      names = [_shown_name(gt_files[k], gt_dir) for k in only_gt]
      msg.append(f'In {gt_dir} but missing from {lq_dir}: {_short_list(names)}.')
    msg.append('Fix: add the missing files, or remove the unpaired ones.')
    raise errors.InvalidInputError('\n  '.join(msg))
  return [(lq_files[k], gt_files[k], k) for k in sorted(lq_files)]


def _shown_name(path, folder):
  """A file's name for a message: its path inside `folder` (extension kept), else its base name."""
  rel = os.path.relpath(path, folder) if os.path.isdir(folder) else os.path.basename(path)
  return os.path.basename(path) if rel.startswith('..') else rel


def _find_dir(root, candidates, what):
  """Returns the first existing `root/candidate`, or raises naming all tried."""
  tried = [os.path.join(root, c) for c in candidates]
  for path in tried:
    if os.path.isdir(path):
      return path
  raise errors.MissingPathError(
      f'{what}: none of these folders exists: {", ".join(tried)}. '
      'Check the dataset root and layout (see hinet_jax/data/datasets.py).')


# ----------------------------------------------------------------------------
# File-based sources.


class PairedFileSource:
  """Random-access source over a fixed list of (lq_path, gt_path, name) pairs.

  Attributes:
    pairs: list of (lq_path, gt_path, name).
    on_error: 'raise' or 'skip' (per-pair read errors become None + a log line).
    num_skipped: pairs skipped so far in this process.
  """

  def __init__(self, pairs, on_error='raise'):
    if on_error not in ('raise', 'skip'):
      raise errors.InvalidInputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not pairs:
      raise errors.InvalidInputError('No image pairs found: check the dataset root and split')
    self.pairs = list(pairs)
    self.on_error = on_error
    self.num_skipped = 0

  def __len__(self):
    return len(self.pairs)

  def __repr__(self):
    return f'{type(self).__name__}({len(self)} pairs, first={self.pairs[0][2]!r})'

  def __getitem__(self, index):
    lq_path, gt_path, name = self.pairs[index]
    try:
      return read_pair(lq_path, gt_path, name)
    except (image_ops.ImageReadError, ValueError) as e:
      if self.on_error == 'raise':
        raise
      self.num_skipped += 1
      logging.warning('Skipping pair %s (%d skipped so far in this process): %s', name,
                      self.num_skipped, e)
      return None


def read_pair(lq_path, gt_path, name):
  """Reads one pair and checks that both images have the same size.

  Args:
    lq_path: degraded image file.
    gt_path: clean image file.
    name: the pair's name.

  Returns:
    {'lq', 'gt', 'name'} dict.

  Raises:
    image_ops.ImageReadError: a file is unreadable (named in the message).
    errors.InvalidInputError: the two images differ in size (both files named).
  """
  lq = image_ops.read_image(lq_path)
  gt = image_ops.read_image(gt_path)
  if lq.shape != gt.shape or lq.dtype != gt.dtype:
    raise errors.InvalidInputError(
        f'Pair {name!r} does not match: {lq_path} is {lq.shape} {lq.dtype} but '
        f'{gt_path} is {gt.shape} {gt.dtype}. Fix or remove the pair.')
  return {'lq': lq, 'gt': gt, 'name': name}


class PairedFolderSource(PairedFileSource):
  """Pairs `<root>/<input_dir>/*` with `<root>/<target_dir>/*` by file stem.

  Covers GoPro, Rain13k and the cropped SIDD/REDS/GoPro sets; folder names are
  configurable (`blur`/`sharp`, `input_crops`/`gt_crops`, `lq`/`gt`, ...).
  """

  def __init__(self, root, input_dir='input', target_dir='target', on_error='raise',
               recursive=False):
    """Lists and matches the pairs (fails at start-up on a bad layout).

    Args:
      root: dataset folder.
      input_dir: degraded-image sub-folder.
      target_dir: clean-image sub-folder.
      on_error: 'raise' or 'skip' for per-pair read errors.
      recursive: also pair images in sub-folders (names keep the sub-path).
    """
    root = os.fspath(root)
    lq_dir, gt_dir = os.path.join(root, input_dir), os.path.join(root, target_dir)
    pairs = match_pairs(list_images(lq_dir, recursive), list_images(gt_dir, recursive),
                        lq_dir, gt_dir)
    super().__init__(pairs, on_error)


class SiddMediumSource(PairedFileSource):
  """SIDD-Medium sRGB scene folders: `*_NOISY_SRGB_*` paired with `*_GT_SRGB_*`.

  Names follow the official crop script (HINet scripts/data_preparation/sidd.py):
  the file stem with '_NOISY'/'_GT' removed, e.g. '0001_SRGB_010'.
  """

  def __init__(self, root, on_error='raise'):
    """Finds the scene folders under `root` or `root/Data`.

    Args:
      root: SIDD_Medium_Srgb folder (or its Data sub-folder).
      on_error: 'raise' or 'skip' for per-pair read errors.
    """
    super().__init__(list_sidd_medium_pairs(root), on_error)


def list_sidd_medium_pairs(root):
  """Lists the SIDD-Medium (noisy, gt, name) pairs.

  Args:
    root: SIDD_Medium_Srgb folder or its Data sub-folder.

  Returns:
    list of (noisy_path, gt_path, name).
  """
  root = os.fspath(root)
  data = os.path.join(root, 'Data') if os.path.isdir(os.path.join(root, 'Data')) else root
  files = list_images(data, recursive=True)
  noisy, gt = {}, {}
  for key, path in files.items():
    stem = os.path.basename(key)
    if '_NOISY_SRGB_' in stem:
      noisy[stem.replace('_NOISY', '')] = path
    elif '_GT_SRGB_' in stem:
      gt[stem.replace('_GT', '')] = path
  if not noisy and not gt:
    raise errors.InvalidInputError(
        f'No *_NOISY_SRGB_* / *_GT_SRGB_* images under {data}: point root at '
        'SIDD_Medium_Srgb (the folder holding Data/<scene>/)')
  return match_pairs(noisy, gt, f'{data} (*_NOISY_SRGB_*)', f'{data} (*_GT_SRGB_*)')


def gopro_source(root, split='train', on_error='raise', crops=False):
  """GoPro deblurring pairs.

  Accepts the prepared layout `<root>/<split>/{input,target}` (what the official
  instructions produce), the 512x512 training crops `<root>/train/{blur_crops,sharp_crops}`
  (crops=True; `python -m hinet_jax.prepare_gopro` writes them), or the raw GOPRO_Large
  `<root>/<split>/<seq>/{blur,sharp}` (names '<seq>_<frame>'; the gamma-corrected
  `blur_gamma` is not used).

  Args:
    root: GoPro folder.
    split: 'train' or 'test'.
    on_error: 'raise' or 'skip'.
    crops: use blur_crops/sharp_crops.

  Returns:
    A PairedFileSource.
  """
  if split not in ('train', 'test'):
    raise errors.InvalidInputError(f"GoPro split must be 'train' or 'test', got {split!r}")
  base = os.path.join(os.fspath(root), split)
  if crops:
    return PairedFolderSource(base, 'blur_crops', 'sharp_crops', on_error)
  if os.path.isdir(os.path.join(base, 'input')) or not os.path.isdir(base):
    return PairedFolderSource(base, 'input', 'target', on_error)
  pairs = []
  for seq in sorted(os.listdir(base)):
    seq_dir = os.path.join(base, seq)
    if not os.path.isdir(os.path.join(seq_dir, 'blur')):
      continue
    for lq, gt, frame in match_pairs(list_images(os.path.join(seq_dir, 'blur')),
                                     list_images(os.path.join(seq_dir, 'sharp')),
                                     os.path.join(seq_dir, 'blur'),
                                     os.path.join(seq_dir, 'sharp')):
      pairs.append((lq, gt, f'{seq}_{frame}'))
  if not pairs:
    raise errors.MissingPathError(
        f'GoPro: {base} holds neither input/target nor <seq>/blur,sharp '
        'folders: check the root or prepare the dataset')
  return PairedFileSource(pairs, on_error)


def reds_pairs(blur_dir, sharp_dir):
  """Pairs REDS frames, nested `<seq>/<frame>` or flattened `<seq>_<frame>`.

  Args:
    blur_dir: folder of blurred (JPEG) frames.
    sharp_dir: folder of sharp (PNG) frames.

  Returns:
    list of (blur_path, sharp_path, '<seq>_<frame>') sorted by name.
  """
  flat = lambda files: {k.replace('/', '_'): v for k, v in files.items()}
  return match_pairs(flat(list_images(blur_dir, recursive=True)),
                     flat(list_images(sharp_dir, recursive=True)), blur_dir, sharp_dir)


def reds_source(root, split='train', on_error='raise'):
  """REDS deblurring (with JPEG artifacts) pairs.

  The validation subset HINet/NAFNet report on ("REDS val-300", the NTIRE 2021
  track-2 protocol) is made by HINet scripts/data_preparation/reds.py
  (`make_val_300`): flatten val_blur_jpeg/val_sharp (30 sequences 000..029 x
  100 frames) to '<seq>_<frame:08d>' and keep the files matching '*9.*', i.e.
  frames 9, 19, ..., 99 of each sequence: 30 x 10 = 300 pairs. split='val_300'
  applies exactly that rule; an already extracted blur_300/sharp_300 folder
  pair is used as is.

  Args:
    root: REDS folder holding train/ and val/.
    split: 'train', 'val' (all 3000 frames) or 'val_300'.
    on_error: 'raise' or 'skip'.

  Returns:
    A PairedFileSource with names '<seq>_<frame>'.
  """
  root = os.fspath(root)
  if split == 'train':
    base = os.path.join(root, 'train') if os.path.isdir(os.path.join(root, 'train')) else root
    pairs = reds_pairs(_find_dir(base, ['train_blur_jpeg'], 'REDS train blur'),
                       _find_dir(base, ['train_sharp'], 'REDS train sharp'))
  elif split in ('val', 'val_300'):
    base = os.path.join(root, 'val') if os.path.isdir(os.path.join(root, 'val')) else root
    if split == 'val_300' and os.path.isdir(os.path.join(base, 'blur_300')):
      pairs = reds_pairs(os.path.join(base, 'blur_300'), os.path.join(base, 'sharp_300'))
    else:
      pairs = reds_pairs(_find_dir(base, ['val_blur_jpeg', 'val_blur'], 'REDS val blur'),
                         _find_dir(base, ['val_sharp'], 'REDS val sharp'))
      if split == 'val_300':
        pairs = [p for p in pairs if p[2].endswith('9')]
  else:
    raise errors.InvalidInputError(f"REDS split must be 'train', 'val' or 'val_300', got {split!r}")
  return PairedFileSource(pairs, on_error)


def rain13k_source(root, split='train', on_error='raise'):
  """Rain13k deraining pairs: the training set or one of the five test sets.

  Args:
    root: Rain13k folder holding train/{input,target} and test/<name>/{input,target}.
    split: 'train' or one of RAIN13K_TEST_SETS (case-insensitive).
    on_error: 'raise' or 'skip'.

  Returns:
    A PairedFolderSource.
  """
  root = os.fspath(root)
  if split.lower() == 'train':
    return PairedFolderSource(os.path.join(root, 'train'), on_error=on_error)
  by_lower = {s.lower(): s for s in RAIN13K_TEST_SETS}
  if split.lower() not in by_lower:
    raise errors.InvalidInputError(
        f'Unknown Rain13k split {split!r}: use train or one of '
        f'{", ".join(RAIN13K_TEST_SETS)}')
  name = by_lower[split.lower()]
  base = _find_dir(root, [os.path.join('test', name), name], f'Rain13k test set {name}')
  return PairedFolderSource(base, on_error=on_error)


# ----------------------------------------------------------------------------
# SIDD validation blocks (.mat).


def _mat_shape(path, key):
  """Returns (shape, dtype_name, is_hdf5) of one .mat variable without loading it."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise errors.MissingPathError(
        f'SIDD validation file {path} does not exist: download '
        f'{os.path.basename(path)} from the SIDD website')
  try:
    info = {name: (shape, cls) for name, shape, cls in scipy.io.whosmat(path)}
  except NotImplementedError:  # MATLAB v7.3 = HDF5.
    with _open_h5(path) as f:
      if key not in f:
        raise errors.InvalidInputError(
            f'{path} has no variable {key!r} (found {sorted(f.keys())}): '
            'is this the right SIDD file?') from None
      return tuple(reversed(f[key].shape)), str(f[key].dtype), True
  except (ValueError, OSError) as e:
    raise errors.InvalidInputError(
        f'Cannot read {path} as a .mat file ({e}): re-download it') from e
  if key not in info:
    raise errors.InvalidInputError(
        f'{path} has no variable {key!r} (found {sorted(info)}): is this the '
        'right SIDD file?')
  return info[key][0], info[key][1], False


def _open_h5(path):
  """Opens an HDF5 (.mat v7.3) file with h5py, or explains what is missing."""
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.InvalidInputError(
        f'{path} is a MATLAB v7.3 (HDF5) file: pip install h5py to read it, '
        'or re-save it in MATLAB with -v7') from None
  return h5py.File(path, 'r')


def load_mat_blocks(path, key):
  """Loads one SIDD block array as (N1, N2, H, W, 3) uint8.

  Args:
    path: .mat file (v5 via scipy, v7.3 via h5py).
    key: variable name.

  Returns:
    uint8 array.
  """
  shape, _, is_hdf5 = _mat_shape(path, key)
  if is_hdf5:
    with _open_h5(path) as f:
      # MATLAB stores column-major, so h5py sees the axes reversed.
      return np.ascontiguousarray(np.asarray(f[key]).transpose(4, 3, 2, 1, 0))
  import scipy.io  # pylint: disable=g-import-not-at-top
  return scipy.io.loadmat(path, variable_names=[key])[key]


class SiddValidationSource:
  """The 1280 SIDD validation blocks (40 images x 32 blocks of 256x256x3).

  Names are '<image:04d>_<block:02d>' with 0-based indices, e.g. '0003_17'.
  Shapes are checked at construction (without loading pixels); arrays are
  loaded on first access in each process and never pickled.
  """

  def __init__(self, noisy_mat, gt_mat, expected_shape=SIDD_VAL_SHAPE):
    """Validates both files.

    Args:
      noisy_mat: path of ValidationNoisyBlocksSrgb.mat.
      gt_mat: path of ValidationGtBlocksSrgb.mat.
      expected_shape: (N1, N2, H, W, 3); pass None to accept any 5-D uint8
        (N1, N2, H, W, 3) pair of equal shapes (tests use small files).
    """
    self.noisy_mat, self.gt_mat = os.fspath(noisy_mat), os.fspath(gt_mat)
    shapes = []
    for path, key in ((self.noisy_mat, SIDD_VAL_KEYS['noisy']), (self.gt_mat, SIDD_VAL_KEYS['gt'])):
      shape, dtype, _ = _mat_shape(path, key)
      expected = expected_shape or ('N1', 'N2', 'H', 'W', 3)
      ok = (len(shape) == 5 and shape[-1] == 3 and dtype == 'uint8' and
            (expected_shape is None or tuple(shape) == tuple(expected_shape)))
      if not ok:
        raise errors.InvalidInputError(
            f'{path}: variable {key!r} is {tuple(shape)} {dtype}, expected '
            f'{tuple(expected)} uint8 (SIDD sRGB validation blocks). Use the '
            'official ValidationNoisyBlocksSrgb.mat / ValidationGtBlocksSrgb.mat.')
      shapes.append(tuple(shape))
    if shapes[0] != shapes[1]:
      raise errors.InvalidInputError(
          f'{self.noisy_mat} is {shapes[0]} but {self.gt_mat} is {shapes[1]}: '
          'use the matching noisy/GT validation files')
    self.shape = shapes[0]
    self._arrays = None

  def __len__(self):
    return self.shape[0] * self.shape[1]

  def __getstate__(self):
    return {**self.__dict__, '_arrays': None}  # Workers reload instead of copying 500 MB.

  def _load(self):
    if self._arrays is None:
      self._arrays = (load_mat_blocks(self.noisy_mat, SIDD_VAL_KEYS['noisy']),
                      load_mat_blocks(self.gt_mat, SIDD_VAL_KEYS['gt']))
    return self._arrays

  def __getitem__(self, index):
    if not -len(self) <= index < len(self):
      raise IndexError(f'index {index} out of range for {len(self)} blocks')
    i, j = divmod(index % len(self), self.shape[1])
    noisy, gt = self._load()
    return {'lq': noisy[i, j], 'gt': gt[i, j], 'name': f'{i:04d}_{j:02d}'}


# ----------------------------------------------------------------------------
# Demo set: scikit-image photographs with a seeded synthetic degradation.


@functools.lru_cache(maxsize=None)
def load_demo_image(name):
  """Loads one bundled scikit-image photograph as (H, W, 3) uint8 (cached).

  Args:
    name: a `skimage.data` function name from DEMO_TRAIN_IMAGES/DEMO_VAL_IMAGES.

  Returns:
    uint8 RGB array (read-only).
  """
  import skimage.data  # pylint: disable=g-import-not-at-top
  x = getattr(skimage.data, name)()
  if isinstance(x, tuple):  # stereo_motorcycle -> (left, right, disparity): keep left.
    x = x[0]
  x = image_ops._to_rgb(np.asarray(x, np.uint8))  # pylint: disable=protected-access
  x.flags.writeable = False
  return x


def motion_blur_kernel(length, angle_deg):
  """A normalized line kernel of `length` pixels at `angle_deg` (odd size).

  Args:
    length: blur length in pixels (>= 1).
    angle_deg: direction in degrees.

  Returns:
    (k, k) float32 kernel summing to 1.
  """
  size = int(length) | 1
  kernel = np.zeros((size, size), np.float32)
  c = size // 2
  t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * size)
  rows = np.round(c - t * np.sin(np.deg2rad(angle_deg))).astype(int)
  cols = np.round(c + t * np.cos(np.deg2rad(angle_deg))).astype(int)
  kernel[rows, cols] = 1.0
  return kernel / kernel.sum()


def degrade(clean, rng, degradation='noise', sigma=25.0, blur_length=15, jpeg_quality=30):
  """Applies a synthetic degradation to a clean uint8 image.

  Args:
    clean: (H, W, 3) uint8.
    rng: np.random.Generator; the same generator state gives the same output.
    degradation: 'noise' (additive Gaussian), 'blur' (motion blur at a random
      angle), or 'jpeg' (compression).
    sigma: noise standard deviation on the 0-255 scale.
    blur_length: motion blur length in pixels.
    jpeg_quality: JPEG quality 1-95.

  Returns:
    (H, W, 3) uint8 degraded image.
  """
  if degradation == 'noise':
    noisy = clean.astype(np.float32) + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
  if degradation == 'blur':
    from scipy import signal  # pylint: disable=g-import-not-at-top
    kernel = motion_blur_kernel(blur_length, rng.uniform(0.0, 180.0))
    pad = kernel.shape[0] // 2
    padded = np.pad(clean.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
    out = signal.fftconvolve(padded, kernel[..., None], mode='valid', axes=(0, 1))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
  if degradation == 'jpeg':
    from PIL import Image  # pylint: disable=g-import-not-at-top
    buf = io.BytesIO()
    Image.fromarray(clean).save(buf, format='JPEG', quality=int(jpeg_quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB'))
  raise errors.InvalidInputError(
      f"degradation must be 'noise', 'blur' or 'jpeg', got {degradation!r}")


class DemoSource:
  """Real photographs from scikit-image, degraded on the fly (no download).

  Train and val use disjoint photographs (DEMO_TRAIN_IMAGES / DEMO_VAL_IMAGES).
  The degradation of item i is seeded by (seed, split, i), so every read of an
  item is identical and the val set is fixed.
  * train: `repeats` passes over the full images, each with its own noise
    draw; the training pipeline random-crops them.
  * val: the non-overlapping `val_crop` x `val_crop` tiles of each val photo
    (equal-sized, for `create_eval_batches`), or full images if val_crop=None.

  Degraded train items are kept once made (per process; 14 MB a repeat of the 10 photos): the
  training pipeline reads each one once per epoch for a small crop, and degrading the whole
  photo each time cost 28 ms an item, more than the demo model's train step.
  """

  def __init__(self, split='train', degradation='noise', sigma=25.0, seed=0, repeats=16,
               val_crop=256, blur_length=15, jpeg_quality=30, images=None):
    """Sets up the item list (photos load lazily and are cached per process).

    Args:
      split: 'train' or 'val'.
      degradation: 'noise', 'blur' or 'jpeg' (see `degrade`).
      sigma: Gaussian noise sigma on the 0-255 scale.
      seed: degradation seed.
      repeats: train only: each photo appears this many times per epoch.
      val_crop: val only: tile size, or None for full images.
      blur_length: motion blur length.
      jpeg_quality: JPEG quality.
      images: override the photo names for this split.
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

  def __len__(self):
    return len(self.items)

  def __getstate__(self):  # Worker processes start with an empty cache.
    return {**self.__dict__, '_cache': {}}

  def __getitem__(self, index):
    index = range(len(self))[index]  # IndexError out of range, like a list
    if index in self._cache:
      return self._cache[index]
    item = self._make(index)
    if self.split == 'train':
      for key in ('lq', 'gt'):
        item[key].flags.writeable = False  # shared by every later read
      self._cache[index] = item
    return item

  def _make(self, index):
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
    return {'lq': degrade(clean, rng, **self.degrade_kwargs), 'gt': np.array(clean),
            'name': label}


def _tiles(shape, size):
  """Top-left corners of the non-overlapping size x size tiles (or the full image)."""
  if size is None:
    return [None]
  h, w = shape[:2]
  return [(top, left, size) for top in range(0, h - size + 1, size)
          for left in range(0, w - size + 1, size)]


# ----------------------------------------------------------------------------
# TFDS (ArrayRecord) and the factory.


class TfdsSource:
  """Adapter over `tfds.data_source`: decodes 'name' bytes to str.

  The underlying source pickles, so this works inside grain workers.
  """

  def __init__(self, name, split, data_dir=None):
    """Opens a prepared dataset (never downloads).

    Args:
      name: registered builder name (e.g. 'hinet_sidd') or a builder directory
        '<data_dir>/<name>/<version>'.
      split: split name.
      data_dir: TFDS data dir.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if os.path.isdir(os.fspath(name)):
      self.source = tfds.builder_from_directory(os.fspath(name)).as_data_source(split=split)
    else:
      # Registers the hinet_* builders; any builder with lq/gt/name features works.
      from hinet_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top,unused-import
      self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    ex = self.source[index]
    name = ex['name']
    return {'lq': ex['lq'], 'gt': ex['gt'],
            'name': name.decode() if isinstance(name, bytes) else str(name)}


_KINDS = {
    'folder': PairedFolderSource,
    'sidd_medium': SiddMediumSource,
    'sidd_val': SiddValidationSource,
    'gopro': gopro_source,
    'reds': reds_source,
    'rain13k': rain13k_source,
    'tfds': TfdsSource,
    'demo': DemoSource,
}


def make_source(kind, **kwargs):
  """Builds a source from config values.

  Args:
    kind: one of 'folder', 'sidd_medium', 'sidd_val', 'gopro', 'reds',
      'rain13k', 'tfds', 'demo'.
    **kwargs: the constructor arguments of that kind (see the classes above).

  Returns:
    A random-access source.

  Raises:
    ValueError: unknown kind or arguments; the message lists what is accepted.
  """
  if kind not in _KINDS:
    raise errors.InvalidInputError(
        f'Unknown data source kind {kind!r}: use one of {", ".join(_KINDS)}')
  fn = _KINDS[kind]
  signature = inspect.signature(fn)
  try:
    signature.bind(**kwargs)
  except TypeError as e:
    raise errors.InvalidInputError(
        f'Bad arguments for source kind {kind!r}: {e}. Accepted: '
        f'{signature}') from None
  # An unset config placeholder arrives as None; name it instead of failing in os.fspath.
  unset = [name for name, p in signature.parameters.items()
           if p.default is inspect.Parameter.empty and kwargs.get(name) is None]
  if unset:
    raise errors.InvalidInputError(
        f'Source kind {kind!r} needs {", ".join(unset)} (got None): set it in '
        'the data config, e.g. --config.data.train.root=/path/to/data')
  return fn(**kwargs)


def create_source(config):
  """Builds a source from a mapping with a 'kind' key plus that kind's arguments.

  Args:
    config: dict or ConfigDict, e.g. {'kind': 'folder', 'root': '/data/GoPro/train'}.

  Returns:
    A random-access source.
  """
  kwargs = _as_dict(config)
  return make_source(kwargs.pop('kind'), **kwargs)


def _as_dict(config):
  """A plain dict copy of a dict or ConfigDict."""
  return dict(config.to_dict() if hasattr(config, 'to_dict') else config)


def val_set_specs(config):
  """The source spec of every validation set of a `config.data.val` (see `create_val_sources`).

  Args:
    config: dict or ConfigDict: a source spec, optionally with a `sets` field.

  Returns:
    dict name -> source spec (a dict with 'kind'), in the configured order.

  Raises:
    errors.InvalidInputError: `sets` is empty or of an unknown type.
  """
  spec = _as_dict(config)
  sets = spec.pop('sets', None)
  if sets is None:
    return {'val': spec}
  if isinstance(sets, (list, tuple)):
    sets = {name: {'split': name} for name in sets}
  elif hasattr(sets, 'items'):
    sets = {name: _as_dict(set_spec) for name, set_spec in sets.items()}
  else:
    raise errors.InvalidInputError(
        f'config.data.val.sets must be a list of split names or a mapping name -> source spec, '
        f'got {sets!r}')
  if not sets:
    raise errors.InvalidInputError(
        'config.data.val.sets is empty: name at least one validation set, or remove the field')
  # Fields a set leaves out (usually kind and root) come from the outer spec.
  return {str(name): {**spec, **set_spec} for name, set_spec in sets.items()}


def create_val_sources(config):
  """Builds the validation sources of a `config.data.val`.

  A plain source spec gives one set named 'val'. A spec with a `sets` field gives one source per
  set, in order: `sets` is a list of split names (each becomes the spec's `split`, e.g. the five
  Rain13k test sets), or a mapping name -> source spec whose fields override the outer ones.
  The official Rain13k training (HINet basicsr/train_rain.py) reports each set's per-image mean
  PSNR and their plain mean over the sets.

  Args:
    config: dict or ConfigDict, e.g. {'kind': 'rain13k', 'root': '/data/Rain13k',
      'sets': ('Test100', 'Rain100H')}.

  Returns:
    dict name -> random-access source, in the configured order.
  """
  return {name: create_source(spec) for name, spec in val_set_specs(config).items()}
