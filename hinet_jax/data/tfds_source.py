"""A random-access source over a prepared TFDS dataset (ArrayRecord), as `tfds_builders` writes.

tensorflow_datasets is imported when a source is opened, so `import hinet_jax` stays free of it.
"""

import importlib
import os
from typing import Optional

from hinet_jax import files
from hinet_jax.data import paired_files


class TfdsSource:
  """`tfds.data_source` with 'name' decoded to str; it pickles, so it works in grain workers."""

  def __init__(self, name: files.PathLike, split: str, data_dir: Optional[str] = None):
    """Opens split `split` of a prepared dataset, never downloading.

    `name` is a registered builder (e.g. 'hinet_sidd', in `data_dir`) or a builder directory
    '<data_dir>/<name>/<version>'.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if os.path.isdir(os.fspath(name)):
      self.source = tfds.builder_from_directory(os.fspath(name)).as_data_source(split=split)
    else:
      # Registers the hinet_* builders; any builder with lq/gt/name features works.
      importlib.import_module('hinet_jax.data.tfds_builders')
      self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> paired_files.Item:
    ex = self.source[index]
    name = ex['name']
    return {'lq': ex['lq'], 'gt': ex['gt'],
            'name': name.decode() if isinstance(name, bytes) else str(name)}
