"""TFDS builders (manual download dir -> ArrayRecord) for SIDD, GoPro, REDS and Rain13k.

None of these datasets downloads automatically: a builder reads a manual dir laid out as
`layouts.py` describes and writes shards that `datasets.make_source('tfds', ...)` reads back:

  tfds_builders.prepare('hinet_gopro', data_dir='gs://bucket/tfds', manual_dir='/data/GoPro')

Image files are stored as their own bytes (no re-encoding, no TensorFlow import); the SIDD .mat
blocks are encoded to PNG. TFDS shuffles records when writing, so 'name' is the identity. The
`tfds build` CLI needs apache_beam, which is not installed: build with `prepare`.
"""

import abc
import io
import os
from typing import Any, Callable, Dict, Iterator, List, Tuple, Union

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from hinet_jax import files
from hinet_jax.data import image_ops
from hinet_jax.data import layouts
from hinet_jax.data import paired_files
from hinet_jax.data import sidd_mat

_VERSION = tfds.core.Version('1.0.0')
# A split is a list of (lq_path, gt_path, name) or, for the .mat blocks, a source.
Split = Union[List[paired_files.Pair], sidd_mat.SiddValidationSource]


def _features() -> tfds.features.FeaturesDict:
  """The shared feature dict: degraded/clean uint8 RGB images and a name."""
  image = lambda: tfds.features.Image(shape=(None, None, 3), dtype=np.uint8)
  return tfds.features.FeaturesDict({'lq': image(), 'gt': image(), 'name': tfds.features.Text()})


def _check_sizes(lq_path: str, gt_path: str, name: str) -> None:
  """Reads only the image headers to reject a mis-sized pair before writing it."""
  with Image.open(lq_path) as a, Image.open(gt_path) as b:
    if a.size != b.size:
      raise ValueError(f'Pair {name!r} does not match: {lq_path} is {a.size} but {gt_path} '
                       f'is {b.size} (W, H). Fix or remove the pair, then rebuild.')


def _png_file(x: np.ndarray) -> io.BytesIO:
  """A PNG file object for an in-memory uint8 image (tfds then needs no TF)."""
  return io.BytesIO(image_ops.encode_png(x))


class _PairedBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared logic: each split is a list of (lq_path, gt_path, name) or a source."""

  VERSION = _VERSION
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  # tfds derives code_path through `importlib_resources`, which etils 1.15 no longer installs; it
  # only locates a checksums file, which manual-download builders do not have.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=_features(), supervised_keys=('lq', 'gt'))

  @abc.abstractmethod
  def _split_pairs(self, root: str) -> Dict[str, Split]:
    """The splits present under root, by name."""

  def _split_generators(self, dl_manager: Any) -> Dict[str, Iterator[Tuple[str, dict]]]:
    root = os.fspath(dl_manager.manual_dir)
    splits = self._split_pairs(root)
    if not splits:
      raise FileNotFoundError(f'{self.name}: no split found in {root}. '
                              f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    logging.info('%s: building splits %s from %s', self.name, sorted(splits), root)
    return {split: self._generate_examples(pairs) for split, pairs in splits.items()}

  def _generate_examples(self, pairs: Split) -> Iterator[Tuple[str, dict]]:
    if isinstance(pairs, list):
      for lq_path, gt_path, name in pairs:
        _check_sizes(lq_path, gt_path, name)
        yield name, {'lq': lq_path, 'gt': gt_path, 'name': name}
    else:
      for i in range(len(pairs)):
        item = pairs[i]
        yield item['name'], {'lq': _png_file(item['lq']), 'gt': _png_file(item['gt']),
                             'name': item['name']}


def _optional(splits: Dict[str, Split], name: str, make: Callable[[], Split]) -> None:
  """Adds splits[name] = make() if the data is there; a missing folder is skipped."""
  try:
    splits[name] = make()
  except FileNotFoundError as e:
    logging.info('Skipping split %s: %s', name, e)


class HinetSidd(_PairedBuilder):
  """SIDD-Medium sRGB: official 512x512 training crops and the 1280 validation blocks."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Place in the manual dir: train/input_crops and train/gt_crops (made by `python -m '
      'hinet_jax.prepare_sidd`) and/or ValidationNoisyBlocksSrgb.mat + '
      'ValidationGtBlocksSrgb.mat (in the manual dir or its val/ sub-folder).')

  def _split_pairs(self, root: str) -> Dict[str, Split]:
    splits = {}
    train = os.path.join(root, 'train') if os.path.isdir(os.path.join(root, 'train')) else root
    _optional(splits, 'train', lambda: paired_files.PairedFolderSource(
        train, 'input_crops', 'gt_crops').pairs)
    for folder in (root, os.path.join(root, 'val')):
      noisy = os.path.join(folder, 'ValidationNoisyBlocksSrgb.mat')
      if os.path.isfile(noisy):
        splits['validation'] = sidd_mat.SiddValidationSource(
            noisy, os.path.join(folder, 'ValidationGtBlocksSrgb.mat'), expected_shape=None)
        break
    return splits


class HinetGopro(_PairedBuilder):
  """GoPro deblurring: train (2103 pairs) and test (1111 pairs), full frames."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Place in the manual dir: train/{input,target} and test/{input,target} (or the raw '
      'GOPRO_Large train|test/<seq>/{blur,sharp}).')

  def _split_pairs(self, root: str) -> Dict[str, Split]:
    splits = {}
    for split in layouts.GOPRO_SPLITS:
      _optional(splits, split, lambda s=split: layouts.gopro_source(root, s).pairs)
    return splits


class HinetReds(_PairedBuilder):
  """REDS deblurring with JPEG artifacts: train and the official val-300 subset."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Place in the manual dir: train/train_blur_jpeg, train/train_sharp, val/val_blur_jpeg, '
      'val/val_sharp (per-sequence <seq>/<frame> folders as downloaded).')

  def _split_pairs(self, root: str) -> Dict[str, Split]:
    splits = {}
    _optional(splits, 'train', lambda: layouts.reds_source(root, 'train').pairs)
    _optional(splits, 'val_300', lambda: layouts.reds_source(root, 'val_300').pairs)
    return splits


class HinetRain13k(_PairedBuilder):
  """Rain13k deraining: train and the five test sets (split names in lower case)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Place in the manual dir: train/{input,target} and test/<Test100|Rain100H|Rain100L|'
      'Test2800|Test1200>/{input,target}.')

  def _split_pairs(self, root: str) -> Dict[str, Split]:
    splits = {}
    for split in ('train',) + layouts.RAIN13K_TEST_SETS:
      _optional(splits, split.lower(), lambda s=split: layouts.rain13k_source(root, s).pairs)
    return splits


BUILDERS = {'hinet_sidd': HinetSidd, 'hinet_gopro': HinetGopro, 'hinet_reds': HinetReds,
            'hinet_rain13k': HinetRain13k}


def prepare(name: str, data_dir: files.PathLike,
            manual_dir: files.PathLike) -> tfds.core.DatasetBuilder:
  """Builds dataset `name` (a key of BUILDERS) from `manual_dir` into `data_dir`, idempotently.

  Returns:
    The builder; its `.info.splits` lists what was written.
  """
  if name not in BUILDERS:
    raise ValueError(f'Unknown builder {name!r}: use one of {", ".join(BUILDERS)}')
  builder = BUILDERS[name](data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder
