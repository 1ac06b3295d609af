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

SSIM is the field's reference (BasicSR `_ssim`, MATLAB `ssim_index`: per channel, 'valid' window).
HINet's own code measures RGB SSIM with a 3-D Gaussian over H, W and channels (`_ssim_3d`) and Y
SSIM with replicated borders (`_ssim_cly`), basicsr/metrics/psnr_ssim.py, so SSIM may differ from
the paper's in the third decimal; PSNR follows the official settings exactly.

Every summary holds `psnr`, `ssim`, `input_psnr`, `input_ssim` (the degraded input against the
target, same settings), `num_images`, `protocol` and the settings used.
"""

import collections
import dataclasses
import functools
import math
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from hinet_jax import backends
from hinet_jax.data import datasets
from hinet_jax.data import input_pipeline
from hinet_jax.evaluation import inference
from hinet_jax.evaluation import metrics

METRIC_KEYS = ('psnr', 'ssim', 'input_psnr', 'input_ssim')
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
    Dict with METRIC_KEYS, each (N,) (or scalar for HWC).
  """
  kw = dict(data_range=1.0, crop_border=config.crop_border, y_channel=config.y_channel,
            quantize=config.quantize)
  return {'psnr': metrics.psnr(pred, gt, **kw), 'ssim': metrics.ssim(pred, gt, **kw),
          'input_psnr': metrics.psnr(lq, gt, **kw), 'input_ssim': metrics.ssim(lq, gt, **kw)}


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
  """Turns metric sums (with 'num_images') into means."""
  n = float(sums['num_images'])
  out = {k: (float(sums[k]) / n if n else math.nan) for k in METRIC_KEYS}
  out['num_images'] = int(round(n))
  return out


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
      metrics are measured on the whole batch shape.
    metric_config: metric settings (default: RGB, float output, no border crop).
    self_ensemble: x8 dihedral self-ensemble.
    rows: if given, one dict per real image ({'name', *METRIC_KEYS}) is appended.
    save_fn: if given, called as save_fn(name, restored HWC float32) for each real image.
    in_flight: batches dispatched before the oldest one is waited for; None: the backend's
      (`inference.calls_in_flight(predict_fn)`). Each holds its temporaries while it runs.

  Returns:
    {'psnr', 'ssim', 'input_psnr', 'input_ssim': means over real images, 'num_images': int}.
    The sums run over the batches given: with global (sharded) batch arrays they are global; with
    per-process host batches each process gets its own slice's means.
  """
  totals = None
  # Waiting for older batches once the next one is read bounds the executions in flight.
  pending = collections.deque()
  in_flight = max(1, in_flight or inference.calls_in_flight(predict_fn))
  for batch in batches:
    mask = np.asarray(batch.get('mask', np.ones(len(batch['lq']))), np.float32)
    _check_unpadded(batch, mask)
    while len(pending) >= in_flight:
      jax.block_until_ready(pending.popleft())
    per_image, sums, pred = eval_step(params, batch['lq'], batch['gt'], mask,
                                      predict_fn=predict_fn, config=metric_config,
                                      self_ensemble=self_ensemble)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    pending.append(sums)
    if rows is None and save_fn is None:
      continue
    per_image = {k: np.asarray(v) for k, v in per_image.items()}
    pred = np.asarray(pred) if save_fn is not None else None
    names = batch.get('name') or [str(i) for i in range(len(mask))]
    for i in np.flatnonzero(mask > 0):
      if rows is not None:
        rows.append({'name': names[i], **{k: float(per_image[k][i]) for k in METRIC_KEYS}})
      if save_fn is not None:
        save_fn(names[i], pred[i])
  if totals is None:
    raise ValueError('No evaluation batches: the evaluation source is empty.')
  return summarize(jax.device_get(totals))


def _check_unpadded(batch, mask):
  """Fails if a batch holds padded images (their metrics would include the padding)."""
  if 'hw' not in batch:
    return
  hw = np.asarray(batch['hw'])[mask > 0]
  shape = tuple(batch['lq'].shape[1:3])  # No host copy of (possibly sharded) device arrays.
  if np.any(hw != np.asarray(shape)):
    raise ValueError(f'The batch holds images padded to {shape}; evaluate_batches measures whole '
                     'batch images, so build the batches without pad_to (or use evaluate_pairs).')


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
    rows: if given, one dict per image ({'name', *METRIC_KEYS}) is appended.
    save_fn: if given, called as save_fn(name, restored HWC float32).

  Returns:
    {'psnr', 'ssim', 'input_psnr', 'input_ssim': means over images, 'num_images': int}.
  """
  totals = {k: 0.0 for k in METRIC_KEYS}
  count = 0
  for item in pairs:
    pred = restore_fn(item['lq'])
    values = {k: float(v) for k, v in
              _image_metrics_jit(pred, item['gt'], item['lq'], config=metric_config).items()}
    for k in METRIC_KEYS:
      totals[k] += values[k]
    count += 1
    if rows is not None:
      rows.append({'name': item['name'], **values})
    if save_fn is not None:
      save_fn(item['name'], pred)
    logging.log_every_n(logging.INFO, 'Evaluated %d images (last %s: PSNR %.2f dB).', 50,
                        count, item['name'], values['psnr'])
  if not count:
    raise ValueError('No images to evaluate: the evaluation source is empty.')
  return summarize({**totals, 'num_images': count})


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

  Args:
    predict_fn: jitted `predict(params, x)`.
    params: model parameters.
    source: random-access source of {'lq', 'gt', 'name'}.
    protocol: metric settings and whether images are batched.
    tile: tile side for per-image restoration (None: whole images).
    overlap: minimum tile overlap (0: the official adaptive grid).
    blend: 'average' or 'smooth'.
    self_ensemble: x8 dihedral self-ensemble.
    batch_size: images (batched protocols) or tiles per call.
    rows: per-image metric rows are appended here.
    save_fn: save_fn(name, restored HWC float32) per image.

  Returns:
    Summary dict (see `evaluate_batches`).
  """
  if protocol.batched and tile is None:
    batches = input_pipeline.create_eval_batches(source, batch_size=batch_size)
    return evaluate_batches(predict_fn, params, batches, metric_config=protocol.metrics,
                            self_ensemble=self_ensemble, rows=rows, save_fn=save_fn)
  restore_fn = functools.partial(inference.restore_image, predict_fn, params, tile=tile,
                                 overlap=overlap, batch_size=batch_size, blend=blend,
                                 self_ensemble=self_ensemble)
  return evaluate_pairs(restore_fn, input_pipeline.iterate_pairs(source),
                        metric_config=protocol.metrics, rows=rows, save_fn=save_fn)


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
    rows: per-image rows ({'subset', 'name', *METRIC_KEYS}) are appended here.
    save_fn: save_fn(subset, name, restored HWC float32) per image.

  Returns:
    Summary: METRIC_KEYS means and 'num_images' (for several subsets: the mean of the subset means
    and the total count, plus 'subsets': {name: summary}), 'protocol', and 'settings'.
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
    summary = {k: float(np.mean([s[k] for s in per_subset.values()])) for k in METRIC_KEYS}
    summary['num_images'] = sum(s['num_images'] for s in per_subset.values())
    summary['subsets'] = per_subset
  summary['protocol'] = protocol_name
  summary['settings'] = {**dataclasses.asdict(protocol.metrics), 'data_range': 1.0, 'tile': tile,
                         'overlap': overlap if tile else None, 'blend': blend if tile else None,
                         'self_ensemble': self_ensemble}
  return summary


def format_table(summary: dict) -> str:
  """A plain-text table of a summary (one line per subset, then the average)."""
  header = f'{"set":<12}{"images":>8}{"PSNR":>9}{"SSIM":>8}{"in PSNR":>9}{"in SSIM":>9}'
  line = lambda name, s: (f'{name:<12}{s["num_images"]:>8d}{s["psnr"]:>9.3f}{s["ssim"]:>8.4f}'
                          f'{s["input_psnr"]:>9.3f}{s["input_ssim"]:>9.4f}')
  out = [header]
  for name, s in summary.get('subsets', {}).items():
    out.append(line(name, s))
  out.append(line('average' if 'subsets' in summary else summary.get('protocol', 'all'), summary))
  return '\n'.join(out)
