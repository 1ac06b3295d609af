"""The SIDD validation blocks: ValidationNoisyBlocksSrgb.mat and ValidationGtBlocksSrgb.mat.

MATLAB v5 files are read by scipy, v7.3 (HDF5) by h5py; both are imported when a file is read.
"""

import os
from typing import Any, Optional, Tuple

import numpy as np

from hinet_jax import errors
from hinet_jax import files
from hinet_jax.data import paired_files

SIDD_VAL_SHAPE = (40, 32, 256, 256, 3)
SIDD_VAL_KEYS = {'noisy': 'ValidationNoisyBlocksSrgb', 'gt': 'ValidationGtBlocksSrgb'}


def _mat_shape(path: str, key: str) -> Tuple[Tuple[int, ...], str, bool]:
  """(shape, dtype name, is_hdf5) of one .mat variable, read without loading it."""
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
        f'{path} has no variable {key!r} (found {sorted(info)}): is this the right SIDD file?')
  return info[key][0], info[key][1], False


def _open_h5(path: str) -> Any:
  """The HDF5 (.mat v7.3) file opened by h5py, or an error saying how to read it."""
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.InvalidInputError(
        f'{path} is a MATLAB v7.3 (HDF5) file: pip install h5py to read it, '
        'or re-save it in MATLAB with -v7') from None
  return h5py.File(path, 'r')


def load_mat_blocks(path: str, key: str) -> np.ndarray:
  """Variable `key` of a SIDD .mat file (v5 or v7.3) as (N1, N2, H, W, 3) uint8."""
  _, _, is_hdf5 = _mat_shape(path, key)
  if is_hdf5:
    with _open_h5(path) as f:
      # MATLAB stores column-major, so h5py sees the axes reversed.
      return np.ascontiguousarray(np.asarray(f[key]).transpose(4, 3, 2, 1, 0))
  import scipy.io  # pylint: disable=g-import-not-at-top
  return scipy.io.loadmat(path, variable_names=[key])[key]


class SiddValidationSource:
  """The 1280 SIDD validation blocks (40 images x 32 blocks of 256x256x3).

  Names are '<image:04d>_<block:02d>', 0-based (e.g. '0003_17'). Shapes are checked at
  construction without loading pixels; each process loads the arrays on first access.
  """

  def __init__(self, noisy_mat: files.PathLike, gt_mat: files.PathLike,
               expected_shape: Optional[Tuple[int, ...]] = SIDD_VAL_SHAPE):
    """Checks both files' blocks against `expected_shape` (None: any equal 5-D uint8 shapes)."""
    self.noisy_mat, self.gt_mat = os.fspath(noisy_mat), os.fspath(gt_mat)
    shapes = [_checked_shape(path, SIDD_VAL_KEYS[kind], expected_shape)
              for path, kind in ((self.noisy_mat, 'noisy'), (self.gt_mat, 'gt'))]
    if shapes[0] != shapes[1]:
      raise errors.InvalidInputError(
          f'{self.noisy_mat} is {shapes[0]} but {self.gt_mat} is {shapes[1]}: '
          'use the matching noisy/GT validation files')
    self.shape = shapes[0]
    self._arrays = None

  def __len__(self) -> int:
    return self.shape[0] * self.shape[1]

  def __getstate__(self) -> dict:
    return {**self.__dict__, '_arrays': None}  # Workers reload the arrays, never copy them.

  def _load(self) -> Tuple[np.ndarray, np.ndarray]:
    if self._arrays is None:
      self._arrays = (load_mat_blocks(self.noisy_mat, SIDD_VAL_KEYS['noisy']),
                      load_mat_blocks(self.gt_mat, SIDD_VAL_KEYS['gt']))
    return self._arrays

  def __getitem__(self, index: int) -> paired_files.Item:
    if not -len(self) <= index < len(self):
      raise IndexError(f'index {index} out of range for {len(self)} blocks')
    i, j = divmod(index % len(self), self.shape[1])
    noisy, gt = self._load()
    return {'lq': noisy[i, j], 'gt': gt[i, j], 'name': f'{i:04d}_{j:02d}'}


def _checked_shape(path: str, key: str,
                   expected_shape: Optional[Tuple[int, ...]]) -> Tuple[int, ...]:
  """The shape of SIDD blocks `key` in `path`; an error unless uint8 (..., 3) as expected."""
  shape, dtype, _ = _mat_shape(path, key)
  expected = expected_shape or ('N1', 'N2', 'H', 'W', 3)
  ok = (len(shape) == 5 and shape[-1] == 3 and dtype == 'uint8' and
        (expected_shape is None or tuple(shape) == tuple(expected_shape)))
  if not ok:
    raise errors.InvalidInputError(
        f'{path}: variable {key!r} is {tuple(shape)} {dtype}, expected {tuple(expected)} uint8 '
        '(SIDD sRGB validation blocks). Use the official ValidationNoisyBlocksSrgb.mat / '
        'ValidationGtBlocksSrgb.mat.')
  return tuple(shape)
