"""Paired image files: listing a folder, pairing two folders by name, and sources over the pairs.

A source has `__len__` and `__getitem__` (grain's random-access protocol) and returns
`{'lq': HWC uint8|uint16 RGB, 'gt': same, 'name': str}`. It keeps only paths, so it pickles
cheaply into grain workers; pixels are read on access (`image_ops.read_image`).
"""

import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from absl import logging

from hinet_jax import errors
from hinet_jax import files
from hinet_jax.data import image_ops

Pair = Tuple[str, str, str]  # (lq_path, gt_path, name)
Item = Dict[str, Any]
ON_ERROR = ('raise', 'skip')
LAYOUT_DOC = 'hinet_jax/data/layouts.py'
_MAX_LISTED = 20


def short_list(names: Iterable[str]) -> str:
  """At most _MAX_LISTED of `names`, sorted, for an error message."""
  names = sorted(names)
  more = f' ... and {len(names) - _MAX_LISTED} more' if len(names) > _MAX_LISTED else ''
  return ', '.join(names[:_MAX_LISTED]) + more


def list_images(folder: files.PathLike, recursive: bool = False) -> Dict[str, str]:
  """Lists the images of `folder` (and of its sub-folders if recursive), sorted.

  Returns a dict key -> absolute path; a key is the path inside `folder` without the extension.
  """
  folder = os.path.abspath(os.fspath(folder))
  if not os.path.isdir(folder):
    raise errors.MissingPathError(
        f'Image folder {folder} does not exist: check the dataset root and the layout '
        f'described in {LAYOUT_DOC}')
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
        f'{", ".join(image_ops.IMAGE_EXTENSIONS)}: check the path, or extract the dataset there')
  return dict(sorted(found.items()))


def match_pairs(lq_files: Mapping[str, str], gt_files: Mapping[str, str], lq_dir: str = 'input',
                gt_dir: str = 'target') -> List[Pair]:
  """Pairs two `list_images` results by key as (lq_path, gt_path, name), sorted by name.

  An unmatched key is an error naming its file under the folder (`lq_dir`, `gt_dir`: a folder or
  a label) that lacks its partner.
  """
  only_lq = lq_files.keys() - gt_files.keys()
  only_gt = gt_files.keys() - lq_files.keys()
  if only_lq or only_gt:
    msg = [f'The images in {lq_dir} and {gt_dir} do not pair up by name (a pair is two files '
           'with the same name; the extensions may differ).']
    if only_lq:
      names = [_shown_name(lq_files[k], lq_dir) for k in only_lq]
      msg.append(f'In {lq_dir} but missing from {gt_dir}: {short_list(names)}.')
    if only_gt:
      names = [_shown_name(gt_files[k], gt_dir) for k in only_gt]
      msg.append(f'In {gt_dir} but missing from {lq_dir}: {short_list(names)}.')
    msg.append('Fix: add the missing files, or remove the unpaired ones.')
    raise errors.InvalidInputError('\n  '.join(msg))
  return [(lq_files[k], gt_files[k], k) for k in sorted(lq_files)]


def _shown_name(path: str, folder: str) -> str:
  """A file's path inside `folder` (extension kept), else its base name."""
  rel = os.path.relpath(path, folder) if os.path.isdir(folder) else os.path.basename(path)
  return os.path.basename(path) if rel.startswith('..') else rel


def read_pair(lq_path: str, gt_path: str, name: str) -> Item:
  """Reads one pair as `{'lq', 'gt', 'name'}`; a size or dtype mismatch names both files."""
  lq = image_ops.read_image(lq_path)
  gt = image_ops.read_image(gt_path)
  if lq.shape != gt.shape or lq.dtype != gt.dtype:
    raise errors.InvalidInputError(
        f'Pair {name!r} does not match: {lq_path} is {lq.shape} {lq.dtype} but '
        f'{gt_path} is {gt.shape} {gt.dtype}. Fix or remove the pair.')
  return {'lq': lq, 'gt': gt, 'name': name}


class PairedFileSource:
  """Random-access source over a fixed list of (lq_path, gt_path, name).

  Attributes:
    pairs: the (lq_path, gt_path, name) list.
    on_error: 'raise', or 'skip': a pair that fails to read gives None (grain drops it) and a log.
    num_skipped: pairs skipped so far in this process.
  """

  def __init__(self, pairs: Sequence[Pair], on_error: str = 'raise'):
    if on_error not in ON_ERROR:
      raise errors.InvalidInputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not pairs:
      raise errors.InvalidInputError('No image pairs found: check the dataset root and split')
    self.pairs = list(pairs)
    self.on_error = on_error
    self.num_skipped = 0

  def __len__(self) -> int:
    return len(self.pairs)

  def __repr__(self) -> str:
    return f'{type(self).__name__}({len(self)} pairs, first={self.pairs[0][2]!r})'

  def __getitem__(self, index: int) -> Optional[Item]:
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


class PairedFolderSource(PairedFileSource):
  """Pairs `<root>/<input_dir>/*` with `<root>/<target_dir>/*` by file stem.

  Fails at construction on a bad layout. `recursive` also pairs sub-folders (names keep the
  sub-path).
  """

  def __init__(self, root: files.PathLike, input_dir: str = 'input', target_dir: str = 'target',
               on_error: str = 'raise', recursive: bool = False):
    root = os.fspath(root)
    lq_dir, gt_dir = os.path.join(root, input_dir), os.path.join(root, target_dir)
    pairs = match_pairs(list_images(lq_dir, recursive), list_images(gt_dir, recursive),
                        lq_dir, gt_dir)
    super().__init__(pairs, on_error)
