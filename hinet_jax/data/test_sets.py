"""Where each published test set lies in its dataset folder."""

import os
from typing import List, Optional, Sequence, Tuple

from absl import logging

from hinet_jax.data import layouts
from hinet_jax.data import paired_files
from hinet_jax.data import sidd_mat

SIDD_VAL_FILES = ('ValidationNoisyBlocksSrgb.mat', 'ValidationGtBlocksSrgb.mat')


def _sidd_val(data_dir: str):
  noisy, gt = (os.path.join(data_dir, f) for f in SIDD_VAL_FILES)
  source = sidd_mat.SiddValidationSource(noisy, gt, expected_shape=None)
  if tuple(source.shape) != sidd_mat.SIDD_VAL_SHAPE:
    logging.warning('%s holds blocks of shape %s, not the official %s: the numbers are not '
                    'comparable with published ones.', data_dir, source.shape,
                    sidd_mat.SIDD_VAL_SHAPE)
  return source


def test_set_sources(name: str, data_dir: str,
                     subsets: Optional[Sequence[str]] = None) -> List[Tuple[str, object]]:
  """The (subset name, source) pairs of a protocol's test data; the name is '' for one set.

  Args:
    name: the protocol. sidd_val: `data_dir` holds SIDD_VAL_FILES; gopro: test/{input,target};
      reds: val/ (its 300-frame subset); rain13k: test/<set>/{input,target}; folder:
      input/ and target/.
    data_dir: the dataset folder.
    subsets: rain13k only: these test sets instead of all five.

  Returns:
    List of (name, random-access source of {'lq', 'gt', 'name'}).
  """
  if name == 'sidd_val':
    return [('', _sidd_val(data_dir))]
  if name == 'gopro':
    return [('', layouts.gopro_source(data_dir, 'test'))]
  if name == 'reds':
    return [('', layouts.reds_source(data_dir, 'val_300'))]
  if name == 'rain13k':
    return [(s, layouts.rain13k_source(data_dir, s)) for s in subsets or layouts.RAIN13K_TEST_SETS]
  if name == 'folder':
    return [('', paired_files.PairedFolderSource(data_dir))]
  raise ValueError(f'No data layout known for protocol {name!r}.')
