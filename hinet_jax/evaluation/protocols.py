"""The published evaluation protocols, each with its exact metric settings, run by name.

As the official test configs define them (megvii-model/HINet options/test/*/*.yml, basicsr/test.py):
  * sidd_val: the 1280 256x256 validation blocks, whole, float output (`use_image: false`), RGB.
  * gopro, reds: full frames through the 256 grid (`grids: true`), metrics of the 8-bit output
    (`tensor2img` rounds), RGB.
  * rain13k: the same on the Y channel (`test_y_channel: true`), per test set; the summary is the
    mean of the five set means (the paper's "Average").
  * folder: any `<root>/input` + `<root>/target` pair folder; whole images, 8-bit output, RGB.

`engine` runs them.
"""

import dataclasses
import functools
from typing import Callable, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from hinet_jax.data import layouts
from hinet_jax.data import test_sets
from hinet_jax.evaluation import engine
from hinet_jax.evaluation import inference


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One published setting: its `metrics`, whether equal-sized images run in fixed-shape
  `batched` batches, the grid's `tile` (None: whole images) and `overlap` (0: the official grid),
  and the test sets averaged (`subsets`, Rain13k)."""
  name: str
  metrics: engine.MetricConfig
  batched: bool = False
  tile: Optional[int] = None
  overlap: int = 0
  subsets: Tuple[str, ...] = ()


PROTOCOLS = {
    'sidd_val': Protocol('sidd_val', engine.MetricConfig(quantize=False), batched=True),
    'gopro': Protocol('gopro', engine.MetricConfig(quantize=True), tile=256),
    'reds': Protocol('reds', engine.MetricConfig(quantize=True), tile=256),
    'rain13k': Protocol('rain13k', engine.MetricConfig(y_channel=True, quantize=True), tile=256,
                        subsets=layouts.RAIN13K_TEST_SETS),
    'folder': Protocol('folder', engine.MetricConfig(quantize=True)),
}


def get_protocol(name: str) -> Protocol:
  """Looks up a protocol by name, or fails listing the valid ones."""
  if name not in PROTOCOLS:
    raise ValueError(f'Unknown protocol {name!r}; choose one of {", ".join(PROTOCOLS)}.')
  return PROTOCOLS[name]


_DEFAULT = object()


def evaluate_protocol(predict_fn, params, protocol_name: str, data_dir: str, *,
                      tile=_DEFAULT, overlap: Optional[int] = None, blend: str = 'average',
                      self_ensemble: bool = False, batch_size: int = engine.DEFAULT_BATCH_SIZE,
                      subsets: Optional[Sequence[str]] = None, rows: Optional[List[dict]] = None,
                      save_fn: Optional[Callable[[str, str, np.ndarray], None]] = None) -> dict:
  """Runs a named protocol on its dataset folder.

  Args:
    predict_fn, params, blend, self_ensemble, batch_size: as `engine.evaluate_source`.
    protocol_name: a key of PROTOCOLS.
    data_dir: the dataset folder (`test_sets.test_set_sources`).
    tile: the tile side (None or 0: whole images); default: the protocol's.
    overlap: the minimum tile overlap; default: the protocol's.
    subsets: rain13k only: a subset of the test sets.
    rows: per-image rows ({'subset', 'name', *ROW_KEYS}) are appended here.
    save_fn: save_fn(subset, name, restored HWC float32) per image.

  Returns:
    The summary (`engine`; with several subsets their `engine.mean_over_sets` and 'subsets':
    {name: summary}), 'protocol' and 'settings'.
  """
  protocol = get_protocol(protocol_name)
  tile = protocol.tile if tile is _DEFAULT else (tile or None)
  overlap = protocol.overlap if overlap is None else overlap
  per_subset = {}
  for subset, source in test_sets.test_set_sources(protocol.name, data_dir, subsets):
    logging.info('Evaluating %s%s: %d images.', protocol_name, f'/{subset}' if subset else '',
                 len(source))
    subset_rows = [] if rows is not None else None
    subset_save = None if save_fn is None else functools.partial(save_fn, subset)
    per_subset[subset] = engine.evaluate_source(
        predict_fn, params, source, protocol, tile=tile, overlap=overlap, blend=blend,
        self_ensemble=self_ensemble, batch_size=batch_size, rows=subset_rows, save_fn=subset_save)
    if rows is not None:
      rows.extend({'subset': subset, **r} for r in subset_rows)
  if list(per_subset) == ['']:
    summary = dict(per_subset[''])
  else:
    summary = {**engine.mean_over_sets(per_subset), 'subsets': per_subset}
  summary['protocol'] = protocol_name
  summary['settings'] = {**dataclasses.asdict(protocol.metrics), 'data_range': 1.0, 'tile': tile,
                         'overlap': overlap if tile else None, 'blend': blend if tile else None,
                         'self_ensemble': self_ensemble,
                         'precision': inference.as_forward(predict_fn).precision}
  return summary
