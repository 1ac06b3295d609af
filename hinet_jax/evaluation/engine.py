"""How evaluation runs: batches through a jitted step, metric sums across processes, summaries.

Two engines, shared by training and `eval.py`: `evaluate_batches` for equal-sized images in
fixed-shape, mask-padded batches (one compile), and `evaluate_pairs` for images of any size,
restored one by one. `evaluate_source` splits a source over processes and combines the sums once,
so every process returns the same summary.

Every summary holds `psnr`, `ssim` (peak 1, BasicSR `_ssim`), `input_psnr`, `input_ssim` (the
degraded input), `psnr_official`, `ssim_official` (HINet's own code, `metrics.official_metrics`),
`official_peak_flips` (images the official code scored on the 255 scale) and `num_images`.
"""

import collections
import dataclasses
import functools
import math
from typing import Callable, Dict, Iterable, List, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from hinet_jax.data import image_ops
from hinet_jax.data import input_pipeline
from hinet_jax.evaluation import inference
from hinet_jax.evaluation import metrics

METRIC_KEYS = ('psnr', 'ssim', 'input_psnr', 'input_ssim')
OFFICIAL_KEYS = ('psnr_official', 'ssim_official')
FLIPS_KEY = 'official_peak_flips'  # Per image 0/1; summaries hold the count.
MEAN_KEYS = METRIC_KEYS + OFFICIAL_KEYS
ROW_KEYS = MEAN_KEYS + (FLIPS_KEY,)
DEFAULT_BATCH_SIZE = 8
SaveFn = Callable[[str, np.ndarray], None]


@dataclasses.dataclass(frozen=True)
class MetricConfig:
  """How PSNR/SSIM are measured on floats in [0, 1]: `crop_border` pixels ignored at each
  edge, BT.601 luma (`y_channel`), the restored image rounded to 8 bits first (`quantize`)."""
  crop_border: int = 0
  y_channel: bool = False
  quantize: bool = False


def image_metrics(pred: jax.Array, gt: jax.Array, lq: jax.Array,
                  config: MetricConfig) -> Dict[str, jax.Array]:
  """Per-image ROW_KEYS of restored `pred` and degraded `lq` against `gt` (NHWC or HWC); the
  official forms measure the 8-bit images where the protocol rounds (upstream `use_image`)."""
  kw = dict(data_range=1.0, crop_border=config.crop_border, y_channel=config.y_channel,
            quantize=config.quantize)
  official = metrics.official_metrics(pred, gt, crop_border=config.crop_border,
                                      y_channel=config.y_channel, on_8bit=config.quantize)
  return {'psnr': metrics.psnr(pred, gt, **kw), 'ssim': metrics.ssim(pred, gt, **kw),
          'input_psnr': metrics.psnr(lq, gt, **kw), 'input_ssim': metrics.ssim(lq, gt, **kw),
          **official}


_image_metrics_jit = jax.jit(image_metrics, static_argnames=('config',))


def _self_ensemble(apply, variables, x):
  """Mean of `apply` over the 8 flips/rotations of NHWC x (traced)."""
  total = 0.0
  for k in range(inference.NUM_DIHEDRAL):
    out = apply(variables, image_ops.dihedral(x, k, jnp))
    total = total + image_ops.inverse_dihedral(out, k, jnp)
  return total / inference.NUM_DIHEDRAL


def _eval_step(variables, lq, gt, mask, *, apply, config, self_ensemble):
  pred = _self_ensemble(apply, variables, lq) if self_ensemble else apply(variables, lq)
  per_image = image_metrics(pred, gt, lq, config)
  valid = mask > 0
  sums = {k: jnp.sum(jnp.where(valid, v, 0.0)) for k, v in per_image.items()}
  sums['num_images'] = jnp.sum(mask)
  return per_image, sums, pred


def eval_step(params, lq, gt, mask, *, predict_fn, config: MetricConfig,
              self_ensemble: bool = False):
  """Restores one fixed-shape batch and measures it, compiled by the predictor's backend.

  Args:
    params: model parameters.
    lq, gt: float32 (B, H, W, C) degraded images and targets in [0, 1].
    mask: float32 (B,), 1 for real images, 0 for batch padding.
    predict_fn: an `inference.Forward` or any `predict(params, x)`; reuse the same object.
    config: metric settings.
    self_ensemble: average over the 8 flips/rotations.

  Returns:
    (per_image, sums, restored): (B,) metrics, their mask-weighted sums (padding adds exactly 0,
    even where its PSNR is inf) and the restored batch.
  """
  forward = inference.as_forward(predict_fn)
  step = forward.backend.jit_inference(
      _eval_step, static_argnames=('apply', 'config', 'self_ensemble'))
  return step(forward.variables(params), lq, gt, mask, apply=forward.apply, config=config,
              self_ensemble=self_ensemble)


def summarize(sums: Dict[str, float]) -> Dict[str, float]:
  """Metric sums (with 'num_images') as means; `official_peak_flips` stays a count."""
  n = float(sums['num_images'])
  out = {k: (float(sums[k]) / n if n else math.nan) for k in MEAN_KEYS}
  out[FLIPS_KEY] = int(round(float(sums[FLIPS_KEY])))
  out['num_images'] = int(round(n))
  return out


def mean_over_sets(results: Dict[str, Dict[str, float]]) -> Dict[str, float]:
  """The plain mean over sets of each metric every set has (each set weighs the same, as the
  Rain13k "Average"); int counts add up."""
  keys = set.intersection(*(set(r) for r in results.values()))
  out = {}
  for key in sorted(keys):
    values = [r[key] for r in results.values()]
    if all(isinstance(v, int) for v in values):
      out[key] = int(sum(values))
    elif all(isinstance(v, (int, float)) for v in values):
      out[key] = float(np.mean(values))
  return out


def combine_across_processes(sums: Dict[str, float]) -> Dict[str, float]:
  """Each key's sum over all processes (one collective; the input itself with one process)."""
  if jax.process_count() == 1:
    return sums
  keys = sorted(sums)
  values = np.asarray([float(sums[k]) for k in keys], np.float64)
  # The gather runs in float32 (x64 is off): each float64 travels as float32 high + low parts.
  high = values.astype(np.float32)
  low = np.where(np.isfinite(high), values - high, 0.0).astype(np.float32)
  gathered = np.asarray(multihost_utils.process_allgather(np.stack([high, low])), np.float64)
  totals = gathered.reshape(-1, 2, len(keys)).sum(axis=(0, 1))
  return dict(zip(keys, totals.tolist()))


def _local_mesh(batch_size: int) -> Optional[jax.sharding.Mesh]:
  """The mesh over this process's devices that batches are split over, or None (one process
  and a batch that does not divide: arrays stay where a plain jitted call places them)."""
  devices = jax.local_devices()
  if jax.process_count() == 1 and (len(devices) == 1 or batch_size % len(devices)):
    return None
  return jax.sharding.Mesh(np.asarray(devices), ('data',))


def _replicate_on(mesh: jax.sharding.Mesh, tree):
  """`tree`'s arrays replicated on `mesh` (global replicated arrays reuse their local shards)."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  local = set(mesh.devices.flat)

  def place(x):
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
      if x.sharding.device_set == local and x.is_fully_replicated:
        return x
      if x.is_fully_replicated and {s.device for s in x.addressable_shards} == local:
        return jax.make_array_from_single_device_arrays(
            x.shape, replicated, [s.data for s in x.addressable_shards])
    return jax.device_put(x, replicated)

  return jax.tree.map(place, tree)


def _place_batch(mesh, lq, gt, mask):
  """Host batch arrays split over `mesh` along the batch (replicated if it does not divide)."""
  if mesh is None or isinstance(lq, jax.Array):
    return lq, gt, mask
  n = mesh.devices.size
  spec = jax.sharding.PartitionSpec('data') if len(mask) % n == 0 else None
  sharding = jax.sharding.NamedSharding(mesh, spec or jax.sharding.PartitionSpec())
  return tuple(jax.device_put(np.asarray(a), sharding) for a in (lq, gt, mask))


def _check_unpadded(batch, mask):
  """Fails if a batch holds padded images (their metrics would include the padding)."""
  if 'hw' not in batch:
    return
  hw = np.asarray(batch['hw'])[mask > 0]
  shape = tuple(batch['lq'].shape[1:3])  # No host copy of (possibly sharded) device arrays.
  if np.any(hw != np.asarray(shape)):
    raise ValueError(f'The batch holds images padded to {shape}; evaluate_batches measures whole '
                     'batch images, so build the batches without pad_to (or use evaluate_pairs).')


def _row_values(per_image: Dict[str, np.ndarray], i) -> Dict[str, float]:
  """One image's row: metric floats, and its peak flip as 0/1."""
  row = {k: float(per_image[k][i]) for k in MEAN_KEYS}
  row[FLIPS_KEY] = int(per_image[FLIPS_KEY][i])
  return row


def _report_batch(batch, mask, per_image, pred, rows, save_fn):
  """Appends the real images' rows and saves their restored images."""
  per_image = {k: np.asarray(v) for k, v in per_image.items()}
  pred = np.asarray(pred) if save_fn is not None else None
  names = batch.get('name') or [str(i) for i in range(len(mask))]
  for i in np.flatnonzero(mask > 0):
    if rows is not None:
      rows.append({'name': names[i], **_row_values(per_image, i)})
    if save_fn is not None:
      save_fn(names[i], pred[i])


def batch_sums(predict_fn, params, batches: Iterable[dict], *,
               metric_config: MetricConfig = MetricConfig(), self_ensemble: bool = False,
               rows: Optional[List[dict]] = None, save_fn: Optional[SaveFn] = None,
               in_flight: Optional[int] = None) -> Optional[Dict[str, float]]:
  """Metric sums over fixed-shape batches (see `evaluate_batches`); None if there are none."""
  totals, mesh, placed = None, None, None
  pending = collections.deque()  # Waiting for older batches bounds the executions in flight.
  in_flight = max(1, in_flight or inference.calls_in_flight(predict_fn))
  for batch in batches:
    mask = np.asarray(batch.get('mask', np.ones(len(batch['lq']))), np.float32)
    _check_unpadded(batch, mask)
    if placed is None:
      mesh = _local_mesh(len(mask))
    while len(pending) >= in_flight:
      jax.block_until_ready(pending.popleft())
    lq, gt, mask_in = _place_batch(mesh, batch['lq'], batch['gt'], mask)
    if placed is None:
      placed = params if lq is batch['lq'] else _replicate_on(mesh, params)
    per_image, sums, pred = eval_step(placed, lq, gt, mask_in, predict_fn=predict_fn,
                                      config=metric_config, self_ensemble=self_ensemble)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    pending.append(sums)
    if rows is not None or save_fn is not None:
      _report_batch(batch, mask, per_image, pred, rows, save_fn)
  if totals is None:
    return None
  return {k: float(v) for k, v in jax.device_get(totals).items()}


def evaluate_batches(predict_fn, params, batches: Iterable[dict], *,
                     metric_config: MetricConfig = MetricConfig(), self_ensemble: bool = False,
                     rows: Optional[List[dict]] = None, save_fn: Optional[SaveFn] = None,
                     in_flight: Optional[int] = None) -> dict:
  """Mean metrics over fixed-shape batches (one compile per `predict_fn` object and shape).

  Args:
    predict_fn: an `inference.Forward` or any `predict(params, x)`; reuse the same object.
    params: model parameters.
    batches: {'lq', 'gt': float32 (B, H, W, C) in [0, 1], optional 'mask': (B,) (0: padding),
      'name': B str, 'hw': (B, 2) sizes, which must be the batch's: no padded images}. Host
      batches are split over this process's devices where B divides by their number.
    metric_config: metric settings.
    self_ensemble: x8 dihedral self-ensemble.
    rows: one dict per real image ({'name', *ROW_KEYS}) is appended here.
    save_fn: save_fn(name, restored HWC float32) per real image.
    in_flight: batches dispatched before the oldest is waited for (None: the backend's).

  Returns:
    The summary of this process's batches (module doc).
  """
  sums = batch_sums(predict_fn, params, batches, metric_config=metric_config,
                    self_ensemble=self_ensemble, rows=rows, save_fn=save_fn, in_flight=in_flight)
  if sums is None:
    raise ValueError('No evaluation batches: the evaluation source is empty.')
  return summarize(sums)


def pair_sums(restore_fn: Callable[[np.ndarray], np.ndarray], pairs: Iterable[dict], *,
              metric_config: MetricConfig = MetricConfig(), rows: Optional[List[dict]] = None,
              save_fn: Optional[SaveFn] = None) -> Dict[str, float]:
  """Metric sums (and 'num_images') over images restored one by one (see `evaluate_pairs`)."""
  totals = {k: 0.0 for k in ROW_KEYS}
  count = 0
  for item in pairs:
    pred = restore_fn(item['lq'])
    values = {k: np.asarray(v)[None] for k, v in
              _image_metrics_jit(pred, item['gt'], item['lq'], config=metric_config).items()}
    values = _row_values(values, 0)
    for k in ROW_KEYS:
      totals[k] += values[k]
    count += 1
    if rows is not None:
      rows.append({'name': item['name'], **values})
    if save_fn is not None:
      save_fn(item['name'], pred)
    logging.log_every_n(logging.INFO, 'Evaluated %d images (last %s: PSNR %.2f dB).', 50,
                        count, item['name'], values['psnr'])
  return {**totals, 'num_images': count}


def evaluate_pairs(restore_fn: Callable[[np.ndarray], np.ndarray], pairs: Iterable[dict], *,
                   metric_config: MetricConfig = MetricConfig(),
                   rows: Optional[List[dict]] = None, save_fn: Optional[SaveFn] = None) -> dict:
  """Mean metrics over {'lq', 'gt': float32 HWC, 'name'} pairs of any size, each restored by
  `restore_fn` (e.g. `inference.restore_image` bound to a predictor); see `evaluate_batches`."""
  sums = pair_sums(restore_fn, pairs, metric_config=metric_config, rows=rows, save_fn=save_fn)
  if not sums['num_images']:
    raise ValueError('No images to evaluate: the evaluation source is empty.')
  return summarize(sums)


class _ProcessShare:
  """The items `index, index + count, ...` of a random-access source (one process's share)."""

  def __init__(self, source, index: int, count: int):
    self._source, self._index, self._count = source, index, count

  def __len__(self):
    return len(range(self._index, len(self._source), self._count))

  def __getitem__(self, i):
    return self._source[self._index + i * self._count]


def evaluate_source(predict_fn, params, source, protocol, *, tile: Optional[int] = None,
                    overlap: int = 0, blend: str = 'average', self_ensemble: bool = False,
                    batch_size: int = DEFAULT_BATCH_SIZE, rows: Optional[List[dict]] = None,
                    save_fn: Optional[SaveFn] = None) -> dict:
  """Evaluates a source as `protocol` says, on every JAX process (each scores every
  process-count-th image; the sums are combined once, so all return the same summary).

  Args:
    predict_fn, params, self_ensemble, rows, save_fn: as `evaluate_batches`.
    source: random-access source of {'lq', 'gt', 'name'}.
    protocol: a `protocols.Protocol` (its `metrics`, and `batched`: fixed-shape batches).
    tile, overlap, blend: `inference.restore_image`'s, for images restored one by one.
    batch_size: images (batched, per process) or tiles per call.

  Returns:
    The summary over the whole source.
  """
  index, count = jax.process_index(), jax.process_count()
  if protocol.batched and tile is None:
    batches = input_pipeline.create_eval_batches(source, batch_size=batch_size,
                                                 shard_by_process=count > 1,
                                                 process_index=index, process_count=count)
    sums = batch_sums(predict_fn, params, batches, metric_config=protocol.metrics,
                      self_ensemble=self_ensemble, rows=rows, save_fn=save_fn)
    sums = sums or {**{k: 0.0 for k in ROW_KEYS}, 'num_images': 0.0}
  else:
    restore_fn = functools.partial(inference.restore_image, predict_fn, params, tile=tile,
                                   overlap=overlap, batch_size=batch_size, blend=blend,
                                   self_ensemble=self_ensemble)
    share = source if count == 1 else _ProcessShare(source, index, count)
    sums = pair_sums(restore_fn, input_pipeline.iterate_pairs(share),
                     metric_config=protocol.metrics, rows=rows, save_fn=save_fn)
  sums = combine_across_processes(sums)
  if not sums['num_images']:
    raise ValueError('No images to evaluate: the evaluation source is empty.')
  return summarize(sums)

