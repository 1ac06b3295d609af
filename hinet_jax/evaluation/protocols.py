"""Evaluation protocols: the published HINet numbers, each with its exact metric settings.

Two engines, shared by training (periodic validation) and `eval.py`:
  * `evaluate_batches(predict_fn, params, batches)` for equal-sized images in fixed-shape batches
    (SIDD validation blocks, demo tiles): one jitted step per batch, mask-weighted sums, compiles
    once for a given `predict_fn` object and batch shape.
  * `evaluate_pairs(restore_fn, pairs)` for full frames of any size (GoPro, REDS, Rain13k): each
    image goes through `restore_fn` (e.g. the official 256 grid, `inference.restore_image`).

The protocols (`PROTOCOLS`), as the official test configs define them
(megvii-model/HINet options/test/*/*.yml, basicsr/test.py):
  * sidd_val: the 1280 256x256 validation blocks, whole blocks, float output (`use_image: false`),
    RGB. HINet reports PSNR only for SIDD; SSIM is computed the same way for completeness.
  * gopro, reds: full frames through the grid (`grids: true, crop_size: 256`), metrics on the
    8-bit output (`use_image` defaults to true: `tensor2img` rounds), RGB.
  * rain13k: the same grid and rounding, Y channel (`test_y_channel: true`), on each of the five
    test sets; the summary is the mean of the five per-set means (the paper's "Average").
  * folder: any `<root>/input` + `<root>/target` pair folder; whole images, 8-bit output, RGB.

`psnr` and `ssim` are the project's well-defined metrics: peak fixed at 1, SSIM the field's
reference (BasicSR `_ssim`, MATLAB `ssim_index`: per channel, 'valid' window). Beside them every
protocol reports `psnr_official` and `ssim_official`, measured as HINet's own code does
(basicsr/metrics/psnr_ssim.py, `metrics.official_metrics`): the peak guessed from the output, RGB
SSIM as one 3-D Gaussian SSIM over H, W and channels, Y SSIM with replicate borders. On the 8-bit
protocols the two PSNRs agree; on sidd_val (raw float output) every block whose output overshoots
1.0 is scored on the 255 scale by the official code: `official_peak_flips` counts them.

Every summary holds `psnr`, `ssim`, `input_psnr`, `input_ssim` (the degraded input against the
target, same settings), `psnr_official`, `ssim_official`, `official_peak_flips`, `num_images`,
`protocol` and the settings used.

Evaluation is split over processes and devices: each JAX process scores its share of the images
(batches spread over its local devices), and the metric sums are combined across processes once,
so every process returns the same summary, equal to a single process's to float rounding.
"""

import collections
import dataclasses
import functools
import math
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from hinet_jax import backends
from hinet_jax.data import datasets
from hinet_jax.data import input_pipeline
from hinet_jax.evaluation import inference
from hinet_jax.evaluation import metrics

METRIC_KEYS = ('psnr', 'ssim', 'input_psnr', 'input_ssim')
OFFICIAL_KEYS = ('psnr_official', 'ssim_official')
FLIPS_KEY = 'official_peak_flips'  # Per image 0/1; summaries hold the count.
MEAN_KEYS = METRIC_KEYS + OFFICIAL_KEYS
ROW_KEYS = MEAN_KEYS + (FLIPS_KEY,)
SIDD_VAL_FILES = ('ValidationNoisyBlocksSrgb.mat', 'ValidationGtBlocksSrgb.mat')
DEFAULT_BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True)
class MetricConfig:
  """How PSNR/SSIM are measured (see `hinet_jax.evaluation.metrics`). Images are floats in [0, 1].

  Attributes:
    crop_border: pixels ignored at each edge.
    y_channel: measure BT.601 luma instead of RGB.
    quantize: round the restored image to 8 bits first (metrics of saved PNGs).
  """
  crop_border: int = 0
  y_channel: bool = False
  quantize: bool = False


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One published evaluation setting.

  Attributes:
    name: key in PROTOCOLS.
    metrics: the metric settings.
    batched: equal-sized images evaluated in fixed-shape batches (else one image at a time).
    tile: tile side of the grid (None: whole images).
    overlap: minimum tile overlap (0: the official adaptive grid).
    subsets: named test sets evaluated separately and averaged (Rain13k).
  """
  name: str
  metrics: MetricConfig
  batched: bool = False
  tile: Optional[int] = None
  overlap: int = 0
  subsets: Tuple[str, ...] = ()


PROTOCOLS = {
    'sidd_val': Protocol('sidd_val', MetricConfig(quantize=False), batched=True),
    'gopro': Protocol('gopro', MetricConfig(quantize=True), tile=256),
    'reds': Protocol('reds', MetricConfig(quantize=True), tile=256),
    'rain13k': Protocol('rain13k', MetricConfig(y_channel=True, quantize=True), tile=256,
                        subsets=datasets.RAIN13K_TEST_SETS),
    'folder': Protocol('folder', MetricConfig(quantize=True)),
}


def get_protocol(name: str) -> Protocol:
  """Looks up a protocol by name, or fails listing the valid ones."""
  if name not in PROTOCOLS:
    raise ValueError(f'Unknown protocol {name!r}; choose one of {", ".join(PROTOCOLS)}.')
  return PROTOCOLS[name]


# ----------------------------------------------------------------------------
# Metrics of restored images.


def image_metrics(pred: jax.Array, gt: jax.Array, lq: jax.Array,
                  config: MetricConfig) -> Dict[str, jax.Array]:
  """Per-image PSNR/SSIM of the restored and of the degraded image against the target.

  Args:
    pred: restored images, float NHWC (or HWC) in [0, 1].
    gt: targets, same shape.
    lq: degraded inputs, same shape.
    config: metric settings.

  Returns:
    Dict with ROW_KEYS, each (N,) (or scalar for HWC). The official-convention values measure the
    8-bit images where the protocol rounds (`quantize`, upstream `use_image`), else the raw floats.
  """
  kw = dict(data_range=1.0, crop_border=config.crop_border, y_channel=config.y_channel,
            quantize=config.quantize)
  official = metrics.official_metrics(pred, gt, crop_border=config.crop_border,
                                      y_channel=config.y_channel, on_8bit=config.quantize)
  return {'psnr': metrics.psnr(pred, gt, **kw), 'ssim': metrics.ssim(pred, gt, **kw),
          'input_psnr': metrics.psnr(lq, gt, **kw), 'input_ssim': metrics.ssim(lq, gt, **kw),
          **official}


_image_metrics_jit = jax.jit(image_metrics, static_argnames=('config',))


def _self_ensemble_jnp(predict_fn, params, x):
  """Mean of predict_fn over the 8 flips/rotations of NHWC x (inside jit)."""
  total = 0.0
  for k in range(inference.NUM_DIHEDRAL):
    z = jnp.flip(x, axis=1) if k >= 4 else x
    out = predict_fn(params, jnp.rot90(z, k % 4, axes=(1, 2)))
    out = jnp.rot90(out, -(k % 4), axes=(1, 2))
    total = total + (jnp.flip(out, axis=1) if k >= 4 else out)
  return total / inference.NUM_DIHEDRAL


def eval_step(params, lq, gt, mask, *, predict_fn, config: MetricConfig,
              self_ensemble: bool = False):
  """Restores one fixed-shape batch and measures it.

  Args:
    params: model parameters.
    lq: float32 (B, H, W, C) degraded images in [0, 1].
    gt: targets, same shape.
    mask: float32 (B,), 1 for real images, 0 for batch padding.
    predict_fn: `predict(params, x)`; static, so pass the same object every call. One from
      `inference.make_predict_fn` runs as it does: its backend's compiler options and prepared
      variables.
    config: metric settings (static).
    self_ensemble: average over the 8 flips/rotations (static).

  Returns:
    (per_image, sums, restored): per-image metric dict of (B,) arrays, the mask-weighted sums of
    each metric (padding contributes exactly 0, even where its PSNR is inf), and the restored batch.
  """
  backend = getattr(predict_fn, 'backend', None) or backends.resolve('xla')
  if hasattr(predict_fn, 'apply_variables'):
    # Its jitted form carries compiler options, which JAX takes on the outermost jit only: trace
    # the function it wraps, on the variables it would apply.
    params, predict_fn = predict_fn.prepare(params), predict_fn.apply_variables
  options = backend.inference_compiler_options
  step = _jitted_eval_step(tuple(sorted(options.items())) if options else ())
  return step(params, lq, gt, mask, predict_fn=predict_fn, config=config,
              self_ensemble=self_ensemble)


@functools.cache
def _jitted_eval_step(compiler_options: Tuple[Tuple[str, object], ...]):
  return jax.jit(_eval_step, static_argnames=('predict_fn', 'config', 'self_ensemble'),
                 compiler_options=dict(compiler_options) or None)


def _eval_step(params, lq, gt, mask, *, predict_fn, config, self_ensemble):
  """`eval_step`'s body (traced inside `_jitted_eval_step`)."""
  if self_ensemble:
    pred = _self_ensemble_jnp(predict_fn, params, lq)
  else:
    pred = predict_fn(params, lq)
  per_image = image_metrics(pred, gt, lq, config)
  valid = mask > 0
  sums = {k: jnp.sum(jnp.where(valid, v, 0.0)) for k, v in per_image.items()}
  sums['num_images'] = jnp.sum(mask)
  return per_image, sums, pred


def summarize(sums: Dict[str, float]) -> Dict[str, float]:
  """Turns metric sums (with 'num_images') into means; `official_peak_flips` stays a count."""
  n = float(sums['num_images'])
  out = {k: (float(sums[k]) / n if n else math.nan) for k in MEAN_KEYS}
  out[FLIPS_KEY] = int(round(float(sums[FLIPS_KEY])))
  out['num_images'] = int(round(n))
  return out


def combine_across_processes(sums: Dict[str, float]) -> Dict[str, float]:
  """Adds each process's metric sums (one collective); every process gets the totals.

  Args:
    sums: this process's sums (host floats), the same keys on every process.

  Returns:
    The sums over all processes (the input itself with one process).
  """
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
  """The 1-D mesh over this process's devices that evaluation runs on, or None.

  Batches that divide by the local device count are split over them. With several processes the
  step always runs on the local devices (replicated where the batch does not divide), so each
  process scores its own images without collectives. Otherwise (one process, a batch that does
  not divide) arrays stay where they are, as a plain jitted call places them.
  """
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


def batch_sums(predict_fn, params, batches: Iterable[dict], *,
               metric_config: MetricConfig = MetricConfig(), self_ensemble: bool = False,
               rows: Optional[List[dict]] = None,
               save_fn: Optional[Callable[[str, np.ndarray], None]] = None,
               in_flight: Optional[int] = None) -> Optional[Dict[str, float]]:
  """Metric sums over fixed-shape batches (see `evaluate_batches`); None if there are none.

  Host batches are split over this process's devices (replicated where the batch size does not
  divide by their number); the parameters are replicated there once.
  """
  totals = None
  # Waiting for older batches once the next one is read bounds the executions in flight.
  pending = collections.deque()
  in_flight = max(1, in_flight or inference.calls_in_flight(predict_fn))
  mesh, placed = None, None
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
    if rows is None and save_fn is None:
      continue
    per_image = {k: np.asarray(v) for k, v in per_image.items()}
    pred = np.asarray(pred) if save_fn is not None else None
    names = batch.get('name') or [str(i) for i in range(len(mask))]
    for i in np.flatnonzero(mask > 0):
      if rows is not None:
        rows.append({'name': names[i], **_row_values(per_image, i)})
      if save_fn is not None:
        save_fn(names[i], pred[i])
  if totals is None:
    return None
  return {k: float(v) for k, v in jax.device_get(totals).items()}


def _row_values(per_image: Dict[str, np.ndarray], i) -> Dict[str, float]:
  """One image's row: metric floats, and its peak flip as 0/1."""
  row = {k: float(per_image[k][i]) for k in MEAN_KEYS}
  row[FLIPS_KEY] = int(per_image[FLIPS_KEY][i])
  return row


def evaluate_batches(predict_fn, params, batches: Iterable[dict], *,
                     metric_config: MetricConfig = MetricConfig(), self_ensemble: bool = False,
                     rows: Optional[List[dict]] = None,
                     save_fn: Optional[Callable[[str, np.ndarray], None]] = None,
                     in_flight: Optional[int] = None) -> dict:
  """Mean metrics over fixed-shape batches (the trainer's periodic validation).

  Jit-friendly: every batch has the same shape (`input_pipeline.create_eval_batches` pads the last
  one with zero images and mask 0), so `eval_step` compiles once per `predict_fn` object.

  Args:
    predict_fn: `predict(params, x) -> restored` on float32 NHWC (e.g.
      `inference.make_predict_fn(model)`); reuse the same object across calls.
    params: model parameters.
    batches: iterable of {'lq', 'gt': float32 (B, H, W, C) in [0, 1], 'mask': (B,), optional
      'name': list of B str, optional 'hw': (B, 2) original sizes}. Images must not be padded:
      metrics are measured on the whole batch shape. Host (numpy) batches are split over this
      process's devices where B divides by their number.
    metric_config: metric settings (default: RGB, float output, no border crop).
    self_ensemble: x8 dihedral self-ensemble.
    rows: if given, one dict per real image ({'name', *ROW_KEYS}) is appended.
    save_fn: if given, called as save_fn(name, restored HWC float32) for each real image.
    in_flight: batches dispatched before the oldest one is waited for; None: the backend's
      (`inference.calls_in_flight(predict_fn)`). Each holds its temporaries while it runs.

  Returns:
    {METRIC_KEYS and OFFICIAL_KEYS: means over real images, 'official_peak_flips' and
    'num_images': ints} over the batches given to this process (`evaluate_source` splits a source
    over processes and combines them).
  """
  sums = batch_sums(predict_fn, params, batches, metric_config=metric_config,
                    self_ensemble=self_ensemble, rows=rows, save_fn=save_fn, in_flight=in_flight)
  if sums is None:
    raise ValueError('No evaluation batches: the evaluation source is empty.')
  return summarize(sums)


def _check_unpadded(batch, mask):
  """Fails if a batch holds padded images (their metrics would include the padding)."""
  if 'hw' not in batch:
    return
  hw = np.asarray(batch['hw'])[mask > 0]
  shape = tuple(batch['lq'].shape[1:3])  # No host copy of (possibly sharded) device arrays.
  if np.any(hw != np.asarray(shape)):
    raise ValueError(f'The batch holds images padded to {shape}; evaluate_batches measures whole '
                     'batch images, so build the batches without pad_to (or use evaluate_pairs).')


def pair_sums(restore_fn: Callable[[np.ndarray], np.ndarray], pairs: Iterable[dict], *,
              metric_config: MetricConfig = MetricConfig(), rows: Optional[List[dict]] = None,
              save_fn: Optional[Callable[[str, np.ndarray], None]] = None) -> Dict[str, float]:
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
                   rows: Optional[List[dict]] = None,
                   save_fn: Optional[Callable[[str, np.ndarray], None]] = None) -> dict:
  """Mean metrics over images of any size, restored one by one.

  Args:
    restore_fn: float32 HWC in [0, 1] -> restored float32 HWC (e.g. a partial of
      `inference.restore_image`).
    pairs: iterable of {'lq', 'gt': float32 HWC in [0, 1], 'name': str}
      (`input_pipeline.iterate_pairs(source)`).
    metric_config: metric settings.
    rows: if given, one dict per image ({'name', *ROW_KEYS}) is appended.
    save_fn: if given, called as save_fn(name, restored HWC float32).

  Returns:
    {METRIC_KEYS and OFFICIAL_KEYS: means over images, 'official_peak_flips', 'num_images'}.
  """
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


# ----------------------------------------------------------------------------
# Protocols end to end.


def protocol_sources(protocol: Protocol, data_dir: str,
                     subsets: Optional[Sequence[str]] = None) -> List[Tuple[str, object]]:
  """The (subset name, source) pairs a protocol evaluates, from its dataset folder.

  Args:
    protocol: the protocol.
    data_dir: sidd_val: folder holding ValidationNoisyBlocksSrgb.mat and ValidationGtBlocksSrgb.mat;
      gopro: GoPro root (test/{input,target}); reds: REDS root (val/, the 300-frame subset is
      selected); rain13k: Rain13k root (test/<set>/{input,target}); folder: a folder holding
      input/ and target/.
    subsets: rain13k only: evaluate these test sets instead of all five.

  Returns:
    List of (name, random-access source); the name is '' for single-set protocols.
  """
  name = protocol.name
  if name == 'sidd_val':
    noisy, gt = (os.path.join(data_dir, f) for f in SIDD_VAL_FILES)
    source = datasets.SiddValidationSource(noisy, gt, expected_shape=None)
    if tuple(source.shape) != datasets.SIDD_VAL_SHAPE:
      logging.warning('%s holds blocks of shape %s, not the official %s: the numbers are not '
                      'comparable with published ones.', data_dir, source.shape,
                      datasets.SIDD_VAL_SHAPE)
    return [('', source)]
  if name == 'gopro':
    return [('', datasets.gopro_source(data_dir, 'test'))]
  if name == 'reds':
    return [('', datasets.reds_source(data_dir, 'val_300'))]
  if name == 'rain13k':
    chosen = tuple(subsets) if subsets else protocol.subsets
    return [(s, datasets.rain13k_source(data_dir, s)) for s in chosen]
  if name == 'folder':
    return [('', datasets.PairedFolderSource(data_dir))]
  raise ValueError(f'No data layout known for protocol {name!r}.')


def evaluate_source(predict_fn, params, source, protocol: Protocol, *, tile: Optional[int] = None,
                    overlap: int = 0, blend: str = 'average', self_ensemble: bool = False,
                    batch_size: int = DEFAULT_BATCH_SIZE, rows: Optional[List[dict]] = None,
                    save_fn: Optional[Callable[[str, np.ndarray], None]] = None) -> dict:
  """Evaluates one source the way `protocol` says (batched whole images, or image by image).

  Call it on every JAX process: each scores its share of the images (every process-count-th
  one) and the sums are combined once, so all return the same summary.

  Args:
    predict_fn: jitted `predict(params, x)`.
    params: model parameters.
    source: random-access source of {'lq', 'gt', 'name'}.
    protocol: metric settings and whether images are batched.
    tile: tile side for per-image restoration (None: whole images).
    overlap: minimum tile overlap (0: the official adaptive grid).
    blend: 'average' or 'smooth'.
    self_ensemble: x8 dihedral self-ensemble.
    batch_size: images (batched protocols, per process) or tiles per call.
    rows: per-image metric rows of this process's images are appended.
    save_fn: save_fn(name, restored HWC float32) per image of this process.

  Returns:
    Summary dict (see `evaluate_batches`) over the whole source.
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


_DEFAULT = object()


def evaluate_protocol(predict_fn, params, protocol_name: str, data_dir: str, *,
                      tile=_DEFAULT, overlap: Optional[int] = None, blend: str = 'average',
                      self_ensemble: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
                      subsets: Optional[Sequence[str]] = None, rows: Optional[List[dict]] = None,
                      save_fn: Optional[Callable[[str, str, np.ndarray], None]] = None) -> dict:
  """Runs a named protocol on its dataset folder.

  Args:
    predict_fn: jitted `predict(params, x)` (see `inference.make_predict_fn`).
    params: model parameters.
    protocol_name: a key of PROTOCOLS.
    data_dir: the dataset folder (see `protocol_sources`).
    tile: override the protocol's tile side (None or 0: whole images); default: the protocol's.
    overlap: override the protocol's minimum tile overlap.
    blend: 'average' (official) or 'smooth'.
    self_ensemble: x8 dihedral self-ensemble (not part of any published protocol).
    batch_size: images or tiles per call.
    subsets: rain13k only: a subset of the test sets.
    rows: per-image rows ({'subset', 'name', *ROW_KEYS}) are appended here.
    save_fn: save_fn(subset, name, restored HWC float32) per image.

  Returns:
    Summary: METRIC_KEYS and OFFICIAL_KEYS means, 'official_peak_flips' and 'num_images' (for
    several subsets: the mean of the subset means and the total counts, plus 'subsets':
    {name: summary}), 'protocol', and 'settings'.
  """
  protocol = get_protocol(protocol_name)
  tile = protocol.tile if tile is _DEFAULT else (tile or None)
  overlap = protocol.overlap if overlap is None else overlap
  per_subset = {}
  for subset, source in protocol_sources(protocol, data_dir, subsets):
    logging.info('Evaluating %s%s: %d images.', protocol_name, f'/{subset}' if subset else '',
                 len(source))
    subset_rows = [] if rows is not None else None
    subset_save = None if save_fn is None else functools.partial(save_fn, subset)
    per_subset[subset] = evaluate_source(
        predict_fn, params, source, protocol, tile=tile, overlap=overlap, blend=blend,
        self_ensemble=self_ensemble, batch_size=batch_size, rows=subset_rows, save_fn=subset_save)
    if rows is not None:
      rows.extend({'subset': subset, **r} for r in subset_rows)
  if list(per_subset) == ['']:
    summary = dict(per_subset[''])
  else:
    summary = {k: float(np.mean([s[k] for s in per_subset.values()])) for k in MEAN_KEYS}
    for key in (FLIPS_KEY, 'num_images'):
      summary[key] = sum(s[key] for s in per_subset.values())
    summary['subsets'] = per_subset
  summary['protocol'] = protocol_name
  summary['settings'] = {**dataclasses.asdict(protocol.metrics), 'data_range': 1.0, 'tile': tile,
                         'overlap': overlap if tile else None, 'blend': blend if tile else None,
                         'self_ensemble': self_ensemble,
                         'precision': getattr(predict_fn, 'precision', None)}
  return summary


def format_table(summary: dict) -> str:
  """A plain-text table of a summary (one line per subset, then the average).

  `PSNR`/`SSIM` are the project's metrics; `PSNR*`/`SSIM*` the official code's conventions, and
  `flips` the images whose official peak was guessed 255 (float output over 1.0).
  """
  header = (f'{"set":<12}{"images":>8}{"PSNR":>9}{"SSIM":>8}{"PSNR*":>9}{"SSIM*":>8}{"flips":>7}'
            f'{"in PSNR":>9}{"in SSIM":>9}')
  line = lambda name, s: (f'{name:<12}{s["num_images"]:>8d}{s["psnr"]:>9.3f}{s["ssim"]:>8.4f}'
                          f'{s["psnr_official"]:>9.3f}{s["ssim_official"]:>8.4f}'
                          f'{s[FLIPS_KEY]:>7d}{s["input_psnr"]:>9.3f}{s["input_ssim"]:>9.4f}')
  out = [header]
  for name, s in summary.get('subsets', {}).items():
    out.append(line(name, s))
  out.append(line('average' if 'subsets' in summary else summary.get('protocol', 'all'), summary))
  out.append('PSNR/SSIM: fixed peak, per-channel SSIM. PSNR*/SSIM*: as the official code (peak '
             'guessed from the output, 3-D SSIM); flips: images whose guessed peak was not their '
             'own (float output over 1.0 scored on 255).')
  return '\n'.join(out)
