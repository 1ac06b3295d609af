"""The folder layouts of the published datasets, as HINet/NAFNet's preparation leaves them.

  * SIDD-Medium: `<root>/Data/<scene>/<id>_NOISY_SRGB_<n>.PNG` + `..._GT_SRGB_...`; its crops
    `<root>/train/{input_crops,gt_crops}` (`python -m hinet_jax.prepare_sidd`).
  * SIDD validation: ValidationNoisyBlocksSrgb.mat + ValidationGtBlocksSrgb.mat (`sidd_mat.py`).
  * GoPro: `<root>/{train,test}/{input,target}` (or the raw `<seq>/{blur,sharp}`); its crops
    `<root>/train/{blur_crops,sharp_crops}` (`python -m hinet_jax.prepare_gopro`).
  * REDS: `<root>/{train,val}/{train,val}_{blur_jpeg,sharp}/<seq>/<frame>` (or `<seq>_<frame>`).
  * Rain13k: `<root>/train/{input,target}`, `<root>/test/<Test100|Rain100H|...>/{input,target}`.
  * any other: `<root>/input/*` + `<root>/target/*` (`paired_files.PairedFolderSource`).
Every folder may hold raw `.npy` images instead of PNG/JPEG (memory-mapped, `image_ops`).
"""

import os
from typing import Dict, List, Sequence

from hinet_jax import errors
from hinet_jax import files
from hinet_jax.data import paired_files

# The five deraining test sets of MPRNet/HINet, by their folder names.
RAIN13K_TEST_SETS = ('Test100', 'Rain100H', 'Rain100L', 'Test2800', 'Test1200')
GOPRO_SPLITS = ('train', 'test')
REDS_SPLITS = ('train', 'val', 'val_300')


def find_dir(root: str, candidates: Sequence[str], what: str) -> str:
  """The first existing `root/candidate`; else an error naming every folder tried."""
  tried = [os.path.join(root, c) for c in candidates]
  for path in tried:
    if os.path.isdir(path):
      return path
  raise errors.MissingPathError(
      f'{what}: none of these folders exists: {", ".join(tried)}. '
      f'Check the dataset root and layout (see {paired_files.LAYOUT_DOC}).')


def _sub_or_root(root: str, sub: str) -> str:
  """`root/sub` when that folder exists, else `root` (the user pointed at the split itself)."""
  path = os.path.join(root, sub)
  return path if os.path.isdir(path) else root


def list_sidd_medium_pairs(root: files.PathLike) -> List[paired_files.Pair]:
  """The SIDD-Medium (noisy, gt, name) pairs under `root` (SIDD_Medium_Srgb or its Data/).

  Names follow the official crop script (HINet scripts/data_preparation/sidd.py): the file stem
  without '_NOISY'/'_GT', e.g. '0001_SRGB_010'.
  """
  data = _sub_or_root(os.fspath(root), 'Data')
  noisy, gt = {}, {}
  for key, path in paired_files.list_images(data, recursive=True).items():
    stem = os.path.basename(key)
    if '_NOISY_SRGB_' in stem:
      noisy[stem.replace('_NOISY', '')] = path
    elif '_GT_SRGB_' in stem:
      gt[stem.replace('_GT', '')] = path
  if not noisy and not gt:
    raise errors.InvalidInputError(
        f'No *_NOISY_SRGB_* / *_GT_SRGB_* images under {data}: point root at '
        'SIDD_Medium_Srgb (the folder holding Data/<scene>/)')
  return paired_files.match_pairs(noisy, gt, f'{data} (*_NOISY_SRGB_*)', f'{data} (*_GT_SRGB_*)')


class SiddMediumSource(paired_files.PairedFileSource):
  """SIDD-Medium sRGB scenes under `root` or `root/Data`: `*_NOISY_SRGB_*` with `*_GT_SRGB_*`."""

  def __init__(self, root: files.PathLike, on_error: str = 'raise'):
    super().__init__(list_sidd_medium_pairs(root), on_error)


def gopro_source(root: files.PathLike, split: str = 'train', on_error: str = 'raise',
                 crops: bool = False) -> paired_files.PairedFileSource:
  """GoPro deblurring pairs of `split` ('train' or 'test').

  Reads `<root>/<split>/{input,target}`, the crops `<root>/train/{blur,sharp}_crops`
  (crops=True), or the raw GOPRO_Large `<root>/<split>/<seq>/{blur,sharp}` (names
  '<seq>_<frame>'; its gamma-corrected `blur_gamma` is not used).
  """
  if split not in GOPRO_SPLITS:
    raise errors.InvalidInputError(f"GoPro split must be 'train' or 'test', got {split!r}")
  base = os.path.join(os.fspath(root), split)
  if crops:
    return paired_files.PairedFolderSource(base, 'blur_crops', 'sharp_crops', on_error)
  if os.path.isdir(os.path.join(base, 'input')) or not os.path.isdir(base):
    return paired_files.PairedFolderSource(base, 'input', 'target', on_error)
  pairs = []
  for seq in sorted(os.listdir(base)):
    blur, sharp = (os.path.join(base, seq, d) for d in ('blur', 'sharp'))
    if not os.path.isdir(blur):
      continue
    matched = paired_files.match_pairs(paired_files.list_images(blur),
                                       paired_files.list_images(sharp), blur, sharp)
    pairs += [(lq, gt, f'{seq}_{frame}') for lq, gt, frame in matched]
  if not pairs:
    raise errors.MissingPathError(
        f'GoPro: {base} holds neither input/target nor <seq>/blur,sharp '
        'folders: check the root or prepare the dataset')
  return paired_files.PairedFileSource(pairs, on_error)


def _flat_names(images: Dict[str, str]) -> Dict[str, str]:
  """'<seq>/<frame>' keys as '<seq>_<frame>', the flattened REDS names."""
  return {k.replace('/', '_'): v for k, v in images.items()}


def reds_pairs(blur_dir: str, sharp_dir: str) -> List[paired_files.Pair]:
  """Pairs REDS frames, nested `<seq>/<frame>` or flat `<seq>_<frame>`, named '<seq>_<frame>'."""
  return paired_files.match_pairs(
      _flat_names(paired_files.list_images(blur_dir, recursive=True)),
      _flat_names(paired_files.list_images(sharp_dir, recursive=True)), blur_dir, sharp_dir)


def reds_source(root: files.PathLike, split: str = 'train',
                on_error: str = 'raise') -> paired_files.PairedFileSource:
  """REDS deblurring (with JPEG artifacts) pairs of 'train', 'val' (3000 frames) or 'val_300'.

  'val_300' is the subset HINet/NAFNet report on (NTIRE 2021 track 2), by HINet
  scripts/data_preparation/reds.py `make_val_300`: the flattened val names matching '*9.*',
  i.e. frames 9, 19, ..., 99 of the 30 sequences. An extracted blur_300/sharp_300 is used as is.
  """
  root = os.fspath(root)
  if split not in REDS_SPLITS:
    raise errors.InvalidInputError(f"REDS split must be 'train', 'val' or 'val_300', got {split!r}")
  if split == 'train':
    base = _sub_or_root(root, 'train')
    pairs = reds_pairs(find_dir(base, ['train_blur_jpeg'], 'REDS train blur'),
                       find_dir(base, ['train_sharp'], 'REDS train sharp'))
    return paired_files.PairedFileSource(pairs, on_error)
  base = _sub_or_root(root, 'val')
  if split == 'val_300' and os.path.isdir(os.path.join(base, 'blur_300')):
    pairs = reds_pairs(os.path.join(base, 'blur_300'), os.path.join(base, 'sharp_300'))
  else:
    pairs = reds_pairs(find_dir(base, ['val_blur_jpeg', 'val_blur'], 'REDS val blur'),
                       find_dir(base, ['val_sharp'], 'REDS val sharp'))
    if split == 'val_300':
      pairs = [p for p in pairs if p[2].endswith('9')]
  return paired_files.PairedFileSource(pairs, on_error)


def rain13k_source(root: files.PathLike, split: str = 'train',
                   on_error: str = 'raise') -> paired_files.PairedFolderSource:
  """Rain13k deraining pairs: 'train' or one of RAIN13K_TEST_SETS (any case)."""
  root = os.fspath(root)
  if split.lower() == 'train':
    return paired_files.PairedFolderSource(os.path.join(root, 'train'), on_error=on_error)
  by_lower = {s.lower(): s for s in RAIN13K_TEST_SETS}
  if split.lower() not in by_lower:
    raise errors.InvalidInputError(
        f'Unknown Rain13k split {split!r}: use train or one of {", ".join(RAIN13K_TEST_SETS)}')
  name = by_lower[split.lower()]
  base = find_dir(root, [os.path.join('test', name), name], f'Rain13k test set {name}')
  return paired_files.PairedFolderSource(base, on_error=on_error)
