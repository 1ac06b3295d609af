"""Validation during training: metrics of every validation set, panels, the NLM baseline, PNGs."""

import dataclasses
import json
from typing import Any, Callable, Dict, List

from absl import logging
import jax
import ml_collections
import numpy as np

from hinet_jax import checkpoints
from hinet_jax import files
from hinet_jax.data import image_ops
from hinet_jax.evaluation import engine
from hinet_jax.evaluation import inference
from hinet_jax.evaluation import metrics as metrics_lib
from hinet_jax.evaluation import protocols

PANEL_FILE = 'panel_{name}.png'


def eval_protocol(config: ml_collections.ConfigDict) -> protocols.Protocol:
  """The `protocols.Protocol` that `config.eval` describes (metric settings, batching, tiling)."""
  e = config.eval
  return protocols.Protocol(
      name='validation', batched=e.batched, tile=e.tile or None,
      metrics=engine.MetricConfig(crop_border=e.crop_border, y_channel=e.y_channel,
                                     quantize=e.quantize))


def _as_number(value: Any) -> Any:
  """A metric as a Python int (counts) or float."""
  value = np.asarray(value)
  return int(value) if np.issubdtype(value.dtype, np.integer) else float(value)


def evaluate(predict_fn: Callable, params: Any, config: ml_collections.ConfigDict,
             source: Any) -> Dict[str, Any]:
  """Every metric of `engine.evaluate_source` on one validation set, as Python numbers.

  Args:
    predict_fn: jitted `(params, lq) -> restored` (the same object every call: no recompiles).
    params: the parameters.
    config: the training config (`config.data.eval_batch_size`, `config.eval`).
    source: the validation source.

  Returns:
    {'psnr', 'ssim', 'input_psnr', 'input_ssim', 'num_images', ...}.
  """
  result = engine.evaluate_source(predict_fn, params, source, eval_protocol(config),
                                  tile=config.eval.tile or None,
                                  batch_size=config.data.eval_batch_size)
  return {k: _as_number(v) for k, v in result.items()}


def combine_sets(results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """One set's metrics; of several, their mean (`engine.mean_over_sets`) + '<set>/<key>'."""
  if len(results) == 1:
    return next(iter(results.values()))
  out = engine.mean_over_sets(results)
  for name, result in results.items():
    out.update({f'{name}/{k}': v for k, v in result.items()})
  return out


def restore_items(predict_fn: Callable, params: Any, config: ml_collections.ConfigDict,
                  items: List[Dict[str, np.ndarray]]) -> List[np.ndarray]:
  """float32 HWC restorations in [0, 1] of source items, at the shapes evaluation compiled."""
  lqs = [image_ops.to_float32(item['lq']) for item in items]
  if lqs and config.eval.batched and not config.eval.tile:
    out = list(inference.predict_batched(predict_fn, params, np.stack(lqs),
                                         config.data.eval_batch_size))
  else:
    out = [inference.restore_image(predict_fn, params, x, tile=config.eval.tile or None,
                                   batch_size=config.data.eval_batch_size) for x in lqs]
  return [np.clip(x, 0.0, 1.0).astype(np.float32) for x in out]


def panel(item: Dict[str, np.ndarray], restored: np.ndarray) -> np.ndarray:
  """`degraded | restored | clean` side by side, float32 HWC."""
  return np.concatenate([image_ops.to_float32(item['lq']), restored,
                         image_ops.to_float32(item['gt'])], axis=1)


def make_panels(predict_fn: Callable, params: Any, config: ml_collections.ConfigDict,
                source: Any) -> Dict[str, np.ndarray]:
  """{'eval/panel_<i>': (1, H, 3W, 3)} of the first `config.eval.num_panels` items (sizes vary)."""
  items = [source[i] for i in range(min(config.eval.num_panels, len(source)))]
  restored = restore_items(predict_fn, params, config, items)
  return {f'eval/panel_{i}': panel(it, out)[None]
          for i, (it, out) in enumerate(zip(items, restored))}


def estimate_noise_sigma(x: np.ndarray) -> float:
  """Gaussian noise sigma of an HWC image: Donoho's median(|HH|) / 0.6745 on the Haar HH band.

  `skimage.restoration.estimate_sigma` without PyWavelets (not a dependency); for i.i.d. noise
  the Haar HH band has std sigma exactly. Averaged over channels, on the scale of `x`.
  """
  h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
  x = x[:h, :w].astype(np.float64)
  hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
  return float(np.mean(np.median(np.abs(hh), axis=(0, 1)) / 0.6745))


def nlm_baseline(source: Any, h_factor: float = 0.8) -> Dict[str, float]:
  """{'nlm_psnr', 'nlm_ssim'}: non-local means on every item, the noise demo's classical baseline.

  scikit-image's fast `denoise_nl_means` with h = h_factor * estimated sigma, 5x5 patches and a
  13x13 window: the settings of scikit-image's Gaussian-noise example.
  """
  from skimage import restoration  # pylint: disable=g-import-not-at-top  # skimage: only for NLM
  psnrs, ssims = [], []
  for i in range(len(source)):
    item = source[i]
    lq = item['lq'].astype(np.float32) / 255.0
    gt = item['gt'].astype(np.float32) / 255.0
    sigma = estimate_noise_sigma(lq)
    out = restoration.denoise_nl_means(lq, h=h_factor * sigma, sigma=sigma, fast_mode=True,
                                       patch_size=5, patch_distance=6, channel_axis=-1)
    psnrs.append(float(metrics_lib.psnr(out, gt, data_range=1.0)))
    ssims.append(float(metrics_lib.ssim(out, gt, data_range=1.0)))
  return {'nlm_psnr': float(np.mean(psnrs)), 'nlm_ssim': float(np.mean(ssims))}


@dataclasses.dataclass
class Validation:
  """Validation of one run. Every process runs the same computations; process 0 writes files.

  Attributes:
    val_sets: {name: source}; the first one gives the panels, the PNG and the NLM baseline.
  """

  config: ml_collections.ConfigDict
  workdir: files.PathLike
  writer: Any
  predict_fn: Callable
  val_sets: Dict[str, Any]

  @property
  def first_set(self) -> Any:
    return next(iter(self.val_sets.values()))

  def run(self, step: int, params: Any) -> Dict[str, Any]:
    """Metrics of every set (written as eval/<key>) and panels; 'psnr' ranks checkpoints."""
    result = combine_sets({name: evaluate(self.predict_fn, params, self.config, source)
                           for name, source in self.val_sets.items()})
    self.writer.write_scalars(step, {f'eval/{k}': v for k, v in result.items()})
    self.writer.write_images(step, make_panels(self.predict_fn, params, self.config,
                                               self.first_set))
    logging.info('Step %d validation: PSNR %.2f dB (input %.2f), SSIM %.4f (input %.4f), %d '
                 'images.', step, result['psnr'], result['input_psnr'], result['ssim'],
                 result['input_ssim'], result['num_images'])
    return result

  def final(self, step: int, params: Any) -> Dict[str, Any]:
    """`run`, + the NLM baseline and a panel PNG if configured, written to final_metrics.json."""
    result, e = self.run(step, params), self.config.eval
    if e.nlm_baseline:
      result.update(nlm_baseline(self.first_set, e.nlm_h_factor))
      logging.info('Non-local means baseline on the same images: PSNR %.2f dB, SSIM %.4f; the '
                   'model: PSNR %.2f dB (%+.2f dB), SSIM %.4f.', result['nlm_psnr'],
                   result['nlm_ssim'], result['psnr'], result['psnr'] - result['nlm_psnr'],
                   result['ssim'])
      self.writer.write_scalars(step, {'eval/nlm_psnr': result['nlm_psnr'],
                                       'eval/nlm_ssim': result['nlm_ssim']})
    result['step'] = int(step)
    workdir = checkpoints.workdir_path(self.workdir)
    source = self.first_set
    if e.panel_image >= 0 and len(source):
      item = source[e.panel_image % len(source)]
      restored, = restore_items(self.predict_fn, params, self.config, [item])
      result['panel'] = PANEL_FILE.format(name=item['name'])
      if jax.process_index() == 0:
        image_ops.write_image(workdir / result['panel'], panel(item, restored))
    if jax.process_index() == 0:
      files.write_text(workdir / checkpoints.FINAL_METRICS_FILE,
                       json.dumps(result, indent=2, sort_keys=True))
    logging.info('Final metrics: %s', json.dumps(result, sort_keys=True))
    return result
