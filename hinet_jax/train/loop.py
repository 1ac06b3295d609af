"""HINet training: sharded, resumable, observable. `train_and_evaluate(config, workdir)` is the job.

Data flow: config -> mesh over all devices -> grain pipeline (batches split over 'data') -> model
on the chosen backend and optimizer -> restore the latest checkpoint of the workdir (or init /
`config.init_from`) -> loop of one compiled, donated train step (`hinet_jax.train.step`) -> clu
scalars/images, validation, orbax checkpoints -> WORKDIR/final_metrics.json. The workdir and
`config.init_from` may be local folders or object storage (`gs://bucket/run`).

Robustness:
  * a step whose loss or gradient norm is not finite leaves params and optimizer state unchanged
    and is counted; after `config.train.max_consecutive_nonfinite` such steps in a row the run
    stops with `FloatingPointError`, its checkpoints untouched;
  * SIGTERM (preemption, scheduler) saves a checkpoint and returns cleanly; on multi-process runs
    every process saves at the same step (jax's preemption sync point), whichever got the signal;
  * the final state is checkpointed before the final evaluation, so an error or a preemption
    during that evaluation loses no training;
  * re-running the same command resumes from the last complete checkpoint, data position included;
    with another number of processes (or grain workers) the model and optimizer resume and the
    data order is re-seeded deterministically from the step.
"""

import collections
import dataclasses
import functools
import io
import json
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from hinet_jax import backends
from hinet_jax import errors
from hinet_jax import files
from hinet_jax import models
from hinet_jax.evaluation import metrics as metrics_lib
from hinet_jax.train import checkpointing
from hinet_jax.train import losses
from hinet_jax.train import reporting
from hinet_jax.train import sharding
from hinet_jax.train import step as step_lib

FINAL_METRICS_FILE = checkpointing.FINAL_METRICS_FILE
PANEL_FILE = 'panel_{name}.png'
# The headline validation set when the config names one (`datasets.create_source`).
DEFAULT_VAL_SET = 'val'
# Model fields that may differ between a checkpoint and the config that resumes or fine-tunes
# from it: the compute and parameter dtypes (parameters are cast on restore).
_NON_ARCHITECTURE = ('dtype', 'param_dtype')


# --------------------------------------------------------------------------------------------
# Config checks.


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the option, on settings that would break later.

  Args:
    config: the full training config.
  """
  if config.num_train_steps <= 0:
    raise ValueError(f'config.num_train_steps must be positive, got {config.num_train_steps}.')
  for name in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps'):
    if config[name] <= 0:
      raise ValueError(f'config.{name} must be positive, got {config[name]}.')
  if config.backend not in backends.BACKENDS:
    raise ValueError(f'config.backend={config.backend!r}: choose one of '
                     f'{", ".join(backends.BACKENDS)}.')
  if config.data.crop_size % 2**(config.model.depth - 1):
    raise ValueError(f'config.data.crop_size={config.data.crop_size} must be a multiple of '
                     f'2^(depth-1) = {2**(config.model.depth - 1)}.')
  for split in ('train', 'val'):
    for key, value in config.data[split].items():
      if value is None:
        hint = (f' (pass --config.data.{split}_dir=...)' if 'root' == key and
                f'{split}_dir' in config.data else '')
        raise ValueError(f'config.data.{split}.{key} is not set{hint}.')
  losses.get_loss_fn(config.loss.name)
  step_lib.check_grad_accum_steps(config.batch_size, jax.device_count(), config.grad_accum_steps)


# --------------------------------------------------------------------------------------------
# Data.


def create_sources(config: ml_collections.ConfigDict) -> Tuple[Any, Dict[str, Any]]:
  """The train source and the validation sets ({name: source}) of `config.data`."""
  from hinet_jax.data import datasets  # pylint: disable=g-import-not-at-top
  if hasattr(datasets, 'create_val_sources'):
    val_sets = dict(datasets.create_val_sources(config.data.val))
  else:
    val_sets = {DEFAULT_VAL_SET: datasets.create_source(config.data.val)}
  return datasets.create_source(config.data.train), val_sets


def create_train_iter(config: ml_collections.ConfigDict, source: Any, mesh: jax.sharding.Mesh,
                      stream: int = 0):
  """The checkpointable grain iterator of globally sharded training batches.

  Args:
    config: the training config.
    source: the train source.
    mesh: the data mesh.
    stream: mixed into every process's seeds: 0 for a run's original data order, the resumed
      step when the data position could not be restored (`plan_data_resume`).

  Returns:
    The grain iterator.
  """
  from hinet_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  d = config.data
  return input_pipeline.create_train_iter(
      source, batch_size=config.batch_size, crop_size=d.crop_size, augment=d.augment,
      seed=config.seed, num_workers=d.num_workers, num_threads=d.num_threads,
      prefetch=d.prefetch, data_sharding=sharding.batch_sharding(mesh),
      shard_by_process=d.shard_by_process, stream=stream)


def data_layout(config: ml_collections.ConfigDict) -> Dict[str, int]:
  """What the saved data position depends on: grain writes one state file per process, in a
  format that depends on the number of workers."""
  return {'process_count': jax.process_count(), 'num_workers': config.data.num_workers}


# --------------------------------------------------------------------------------------------
# Evaluation.


def eval_protocol(config: ml_collections.ConfigDict):
  """The `protocols.Protocol` that `config.eval` describes (metric settings, batching, tiling)."""
  from hinet_jax.evaluation import protocols  # pylint: disable=g-import-not-at-top
  e = config.eval
  return protocols.Protocol(
      name='validation', batched=e.batched, tile=e.tile or None,
      metrics=protocols.MetricConfig(crop_border=e.crop_border, y_channel=e.y_channel,
                                     quantize=e.quantize))


def evaluate(predict_fn: Callable, params: Any, config: ml_collections.ConfigDict,
             source: Any) -> Dict[str, Any]:
  """Validation PSNR/SSIM of the restored and of the degraded images, averaged over images.

  Equal-sized images (`config.eval.batched`) go through fixed-shape, mask-padded batches (one
  compile); others one by one, whole or in `config.eval.tile` tiles (`protocols.evaluate_source`).

  Args:
    predict_fn: jitted `(params, lq) -> restored` (the same object every call: no recompiles).
    params: the parameters.
    config: the training config (`config.data.eval_batch_size`, `config.eval`).
    source: the validation source.

  Returns:
    Every metric `protocols.evaluate_source` returns ('psnr', 'ssim', 'input_psnr', 'input_ssim',
    'num_images', the official-convention forms, ...) as Python numbers (counts stay ints).
  """
  from hinet_jax.evaluation import protocols  # pylint: disable=g-import-not-at-top
  result = protocols.evaluate_source(predict_fn, params, source, eval_protocol(config),
                                     tile=config.eval.tile or None,
                                     batch_size=config.data.eval_batch_size)
  return {k: _as_number(v) for k, v in result.items()}


def _as_number(value: Any) -> Any:
  """A metric as a Python int (counts) or float."""
  value = np.asarray(value)
  return int(value) if np.issubdtype(value.dtype, np.integer) else float(value)


def mean_over_sets(results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """The headline metrics of several validation sets: the plain mean of each metric over the sets
  (each set weighs the same, as the Rain13k tables average their five test sets); counts add up.

  Args:
    results: {set name: `evaluate` result}.

  Returns:
    {metric: value} over the metrics every set has.
  """
  keys = set.intersection(*(set(r) for r in results.values()))
  out = {}
  for key in sorted(keys):
    values = [r[key] for r in results.values()]
    counts = all(isinstance(v, int) for v in values)
    out[key] = int(sum(values)) if counts else float(np.mean(values))
  return out


def evaluate_sets(predict_fn: Callable, params: Any, config: ml_collections.ConfigDict,
                  val_sets: Dict[str, Any]) -> Dict[str, Any]:
  """`evaluate` on every validation set.

  Args:
    predict_fn: jitted `(params, lq) -> restored`.
    params: the parameters.
    config: the training config.
    val_sets: {set name: source}.

  Returns:
    The metrics of the one set, or, with several, their `mean_over_sets` plus every set's metrics
    as '<set>/<metric>'.
  """
  results = {name: evaluate(predict_fn, params, config, src) for name, src in val_sets.items()}
  if len(results) == 1:
    return next(iter(results.values()))
  out = mean_over_sets(results)
  for name, result in results.items():
    out.update({f'{name}/{k}': v for k, v in result.items()})
  return out


def restore_items(predict_fn: Callable, params: Any, config: ml_collections.ConfigDict,
                  items: List[Dict[str, np.ndarray]]) -> List[np.ndarray]:
  """Restores source items with the shapes evaluation already compiled for.

  Args:
    predict_fn: jitted `(params, lq) -> restored`.
    params: the parameters.
    config: the training config.
    items: source items ({'lq', 'gt'} uint8 HWC).

  Returns:
    float32 HWC restored images in [0, 1].
  """
  from hinet_jax.data import image_ops  # pylint: disable=g-import-not-at-top
  from hinet_jax.evaluation import inference
  lqs = [image_ops.to_float32(item['lq']) for item in items]
  if config.eval.batched and not config.eval.tile:
    rows = config.data.eval_batch_size  # Same shape as an eval batch: no extra compile.
    out = []
    for i in range(0, len(lqs), rows):
      chunk = np.stack(lqs[i:i + rows])
      batch = np.zeros((rows,) + chunk.shape[1:], np.float32)
      batch[:len(chunk)] = chunk
      out.extend(np.asarray(predict_fn(params, batch))[:len(chunk)])
  else:
    out = [inference.restore_image(predict_fn, params, x, tile=config.eval.tile or None,
                                   batch_size=config.data.eval_batch_size) for x in lqs]
  return [np.clip(x, 0.0, 1.0).astype(np.float32) for x in out]


def make_panels(predict_fn: Callable, params: Any, config: ml_collections.ConfigDict,
                source: Any) -> Dict[str, np.ndarray]:
  """`degraded | restored | clean` panels of the first `config.eval.num_panels` validation items.

  Returns:
    {'eval/panel_<i>': float32 (1, H, 3W, 3)} (one key each: validation images may differ in size).
  """
  from hinet_jax.data import image_ops  # pylint: disable=g-import-not-at-top
  items = [source[i] for i in range(min(config.eval.num_panels, len(source)))]
  restored = restore_items(predict_fn, params, config, items)
  return {f'eval/panel_{i}': np.concatenate(
              [image_ops.to_float32(it['lq']), out, image_ops.to_float32(it['gt'])], axis=1)[None]
          for i, (it, out) in enumerate(zip(items, restored))}


def estimate_noise_sigma(x: np.ndarray) -> float:
  """Gaussian noise sigma of an HWC image from its finest diagonal Haar wavelet coefficients.

  Donoho's robust estimator, median(|HH|) / 0.6745, averaged over channels: what
  `skimage.restoration.estimate_sigma` computes with a db2 wavelet, without needing PyWavelets
  (not a dependency of this project). For i.i.d. noise the Haar HH band has std sigma exactly.

  Args:
    x: float HWC image.

  Returns:
    The estimated sigma on the scale of `x`.
  """
  h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
  x = x[:h, :w].astype(np.float64)
  hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
  return float(np.mean(np.median(np.abs(hh), axis=(0, 1)) / 0.6745))


def nlm_baseline(source: Any, h_factor: float = 0.8) -> Dict[str, float]:
  """Non-local means on every validation item: the classical baseline for the noise demo.

  scikit-image's `denoise_nl_means` with the estimated noise sigma (`estimate_noise_sigma`), fast
  mode, h = h_factor * sigma, 5x5 patches, 13x13 search window (patch_distance 6): the settings
  scikit-image's denoising example tunes for Gaussian noise.

  Args:
    source: the validation source ({'lq', 'gt'} uint8 items).
    h_factor: filter strength relative to the estimated sigma.

  Returns:
    {'nlm_psnr', 'nlm_ssim'}: means over the items.
  """
  from skimage import restoration  # pylint: disable=g-import-not-at-top
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


def save_panel_png(path: files.PathLike, panel: np.ndarray) -> None:
  """Writes a float [0, 1] HWC panel as an 8-bit PNG (whole or not at all; local or gs://)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(np.round(np.clip(panel, 0, 1) * 255).astype(np.uint8)).save(buffer, format='PNG')
  files.write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------
# Loop helpers.


def preemption_service_active() -> bool:
  """Whether jax.distributed runs its preemption service (multi-process runs it initialised).

  The service catches SIGTERM itself on every process and agrees on one step at which all
  processes save (`multihost_utils.reached_preemption_sync_point`).
  """
  if jax.process_count() == 1:
    return False
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  # No public accessor.
  return getattr(distributed.global_state, 'preemption_sync_manager', None) is not None


class StopSignal:
  """Context manager that turns SIGTERM into a stop the loop polls each step.

  One process: a Python handler sets a flag (the old handler is restored on exit). Several
  processes with jax's preemption service: the service's own SIGTERM handler stays installed and
  `should_stop` is its sync point, the same step on every host. Several processes without it: the
  flag, agreed on at log steps (a collective).
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._service = preemption_service_active()

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning('Received signal %d: saving a checkpoint and stopping.', signum)
    self.requested = True

  def __enter__(self):
    if self._service:
      return self  # A Python handler would replace the service's.
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False

  def should_stop(self, step: int, at_log_step: bool) -> bool:
    """Whether to save and stop after `step`: the same answer on every process.

    Args:
      step: the step just dispatched (every process calls this at every step).
      at_log_step: whether `step` is a log step (without the service, processes agree there).

    Returns:
      True if a SIGTERM asks to stop at this step.
    """
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if self._service:
      return multihost_utils.reached_preemption_sync_point(step)
    if not at_log_step:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))


def check_nonfinite(metrics: step_lib.TrainMetrics, step: int, limit: int) -> None:
  """Raises once `limit` steps in a row were skipped for non-finite values.

  Args:
    metrics: the step's metrics, fetched to the host.
    step: the step number they belong to.
    limit: `config.train.max_consecutive_nonfinite`.
  """
  streak = int(metrics.nonfinite_streak.compute())
  if streak and streak % 10 == 1:
    logging.warning('Step %d: non-finite loss or gradient; step skipped (%d in a row).', step,
                    streak)
  if streak >= limit:
    raise FloatingPointError(
        f'{streak} consecutive training steps (up to step {step}) had a non-finite loss or '
        f'gradient norm and were skipped (config.train.max_consecutive_nonfinite={limit}). The '
        'parameters were not updated by them and the checkpoints are intact. Lower '
        '--config.optim.learning_rate, check the data, or try float32 (--config.model.dtype).')


class DispatchedSteps:
  """Train steps dispatched and not yet fetched, oldest first.

  Fetching a step (one small device-to-host copy) checks its non-finite streak and merges its
  metrics into those of the current log period.
  """

  def __init__(self, limit: int):
    self._limit = limit
    self._queue = collections.deque()
    self._period = None

  def __len__(self) -> int:
    return len(self._queue)

  def add(self, step: int, metrics: step_lib.TrainMetrics) -> None:
    """Records the metrics (device arrays) of step `step`, just dispatched."""
    self._queue.append((step, metrics))

  def fetch(self, keep: int = 0) -> None:
    """Waits for and fetches the oldest steps until at most `keep` are left in flight."""
    while len(self._queue) > keep:
      step, metrics = self._queue.popleft()
      metrics = jax.device_get(metrics)
      check_nonfinite(metrics, step, self._limit)
      self._period = metrics if self._period is None else self._period.merge(metrics)

  def take_period(self) -> step_lib.TrainMetrics:
    """Every step's metrics since the last call, merged (fetches the steps still in flight)."""
    self.fetch()
    period, self._period = self._period, None
    return period


@dataclasses.dataclass
class Run:
  """What the loop needs besides the state: built once by `train_and_evaluate`.

  Attributes:
    val_source: the first validation set: panels, the panel PNG and the NLM baseline use it.
    val_sets: every validation set by name (None: just `val_source`).
    data_meta: saved with every checkpoint ({'data_layout', 'data_stream'}, `plan_data_resume`).
  """

  config: ml_collections.ConfigDict
  workdir: Any
  backend: backends.Backend
  mngr: Any
  writer: Any
  train_iter: Any
  val_source: Any
  predict_fn: Callable
  step_fn: Callable
  hooks: List[Callable]
  val_sets: Optional[Dict[str, Any]] = None
  data_meta: Dict[str, Any] = dataclasses.field(default_factory=dict)


def save_checkpoint(run: Run, step: int, state: step_lib.TrainState,
                    val_metrics: Optional[Dict[str, float]] = None) -> None:
  """Checkpoints state + data position + config (+ validation metrics for BestN)."""
  checkpointing.save(run.mngr, step, state, data_iter=run.train_iter,
                     meta={'config': run.config.to_dict(), **run.data_meta},
                     metrics=None if val_metrics is None else {'psnr': val_metrics['psnr']})


def run_eval(run: Run, step: int, params: Any) -> Dict[str, Any]:
  """Validation metrics (every key, as eval/<key>) and image panels, written to TensorBoard.

  Returns:
    The metrics (`evaluate_sets`); 'psnr' is the headline that ranks checkpoints.
  """
  val_sets = run.val_sets or {DEFAULT_VAL_SET: run.val_source}
  result = evaluate_sets(run.predict_fn, params, run.config, val_sets)
  run.writer.write_scalars(step, {f'eval/{k}': v for k, v in result.items()})
  # Every process computes the panels: JAX needs all of them to run the same computations.
  panels = make_panels(run.predict_fn, params, run.config, run.val_source)
  run.writer.write_images(step, panels)
  logging.info('Step %d validation: PSNR %.2f dB (input %.2f), SSIM %.4f (input %.4f), %d images.',
               step, result['psnr'], result['input_psnr'], result['ssim'], result['input_ssim'],
               result['num_images'])
  return result


def log_train(run: Run, step: int, period: step_lib.TrainMetrics, t0: float, steps: int) -> None:
  """Writes the log period's train metrics plus throughput since the last log."""
  scalars = {f'train/{k}': v for k, v in step_lib.compute_metrics(period).items()}
  elapsed = max(time.time() - t0, 1e-9)
  scalars['train/steps_per_sec'] = steps / elapsed
  scalars['train/images_per_sec'] = steps * run.config.batch_size / elapsed
  run.writer.write_scalars(step, scalars)
  logging.info('Step %d/%d: loss %.4f, train PSNR %.2f dB, lr %.3g, |g| %.3g, %.2f steps/s, ETA %s.',
               step, run.config.num_train_steps, scalars['train/loss'], scalars['train/psnr'],
               scalars['train/lr'], scalars['train/grad_norm'], scalars['train/steps_per_sec'],
               reporting.eta_text(run.config.num_train_steps - step,
                                  scalars['train/steps_per_sec']))


def train_loop(run: Run, state: step_lib.TrainState, start_step: int,
               stop: StopSignal) -> Tuple[step_lib.TrainState, int]:
  """Steps from `start_step` to `config.num_train_steps`, or until SIGTERM.

  The next batch is read while the last step runs; then the oldest steps are fetched until fewer
  than the backend's `calls_in_flight` are, and the next step is dispatched. So on accelerators
  the host reads and dispatches ahead of the device, while on CPU a step's temporaries are not
  allocated beside the running one's.

  Args:
    run: the run's components.
    state: the state at `start_step`.
    start_step: completed steps so far.
    stop: the SIGTERM flag.

  Returns:
    `(state, step)`: the last state and its step (< num_train_steps after SIGTERM).
  """
  cfg = run.config
  dispatched = DispatchedSteps(cfg.train.max_consecutive_nonfinite)
  t0, t0_step, step = time.time(), start_step, start_step
  while step < cfg.num_train_steps:
    batch = next(run.train_iter)
    dispatched.fetch(keep=run.backend.calls_in_flight - 1)
    state, metrics = run.step_fn(state, batch)
    step += 1
    dispatched.add(step, metrics)
    for hook in run.hooks:
      hook(step)
    if step % cfg.log_every_steps == 0 or step == cfg.num_train_steps:
      log_train(run, step, dispatched.take_period(), t0, step - t0_step)
      t0, t0_step = time.time(), step
    if step == cfg.num_train_steps:
      break  # The final evaluation and checkpoint follow in train_and_evaluate.
    val_metrics = None
    if step % cfg.eval_every_steps == 0:
      val_metrics = run_eval(run, step, state.params)
    if step % cfg.checkpoint_every_steps == 0 or val_metrics is not None:
      dispatched.fetch()  # No checkpoint past a run that must stop.
      save_checkpoint(run, step, state, val_metrics)
    if stop.should_stop(step, at_log_step=step % cfg.log_every_steps == 0):
      dispatched.fetch()
      save_checkpoint(run, step, state)
      logging.warning('Stopped by SIGTERM at step %d; checkpoint saved in %s. Run the same '
                      'command again to resume.', step, run.workdir)
      return state, step
  dispatched.fetch()
  return state, step


def final_evaluation(run: Run, step: int, params: Any) -> Dict[str, Any]:
  """Final validation (+ NLM baseline and a before/after PNG if configured) -> final_metrics.json.

  Every process runs the same computations; process 0 writes the files.

  Args:
    run: the run's components.
    step: the final step.
    params: the final parameters.

  Returns:
    The metrics written.
  """
  result = run_eval(run, step, params)
  if run.config.eval.nlm_baseline:
    result.update(nlm_baseline(run.val_source, run.config.eval.nlm_h_factor))
    logging.info('Non-local means baseline on the same images: PSNR %.2f dB, SSIM %.4f; the model: '
                 'PSNR %.2f dB (%+.2f dB), SSIM %.4f.', result['nlm_psnr'], result['nlm_ssim'],
                 result['psnr'], result['psnr'] - result['nlm_psnr'], result['ssim'])
    run.writer.write_scalars(step, {'eval/nlm_psnr': result['nlm_psnr'],
                                    'eval/nlm_ssim': result['nlm_ssim']})
  result['step'] = int(step)
  from hinet_jax.data import image_ops  # pylint: disable=g-import-not-at-top
  workdir = checkpointing.workdir_path(run.workdir)
  if run.config.eval.panel_image >= 0 and len(run.val_source):
    item = run.val_source[run.config.eval.panel_image % len(run.val_source)]
    restored, = restore_items(run.predict_fn, params, run.config, [item])
    name = PANEL_FILE.format(name=item['name'])
    if jax.process_index() == 0:
      save_panel_png(workdir / name, np.concatenate(
          [image_ops.to_float32(item['lq']), restored, image_ops.to_float32(item['gt'])], axis=1))
    result['panel'] = name
  if jax.process_index() == 0:
    files.write_text(workdir / FINAL_METRICS_FILE, json.dumps(result, indent=2, sort_keys=True))
  logging.info('Final metrics: %s', json.dumps(result, sort_keys=True))
  return result


# --------------------------------------------------------------------------------------------
# Setup helpers.


def create_hooks(config: ml_collections.ConfigDict, workdir: files.PathLike) -> List[Callable]:
  """A trace of `config.train.profile_steps` steps if `config.train.profile`, else none."""
  if not (config.train.profile and jax.process_index() == 0):
    return []
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top  # Imports TensorFlow.
  return [periodic_actions.Profile(
      logdir=str(workdir), num_profile_steps=config.train.profile_steps,
      first_profile=config.train.profile_first_step, profile_duration_ms=None)]


def architecture_mismatch(saved: Dict[str, Any], model: models.HINet) -> Dict[str, Tuple]:
  """The architecture fields in which a stored model config differs from `model`.

  Args:
    saved: `create_model` keyword arguments as a checkpoint stored them (configs written by
      earlier versions may carry keys that are no longer architecture; `create_model` drops them).
    model: the model of the current config.

  Returns:
    {field: (stored, current)}; empty if they match.
  """
  stored, current = models.model_config(models.create_model(**saved)), models.model_config(model)
  return {k: (stored.get(k), v) for k, v in current.items()
          if k not in _NON_ARCHITECTURE and stored.get(k) != v}


def check_init_from(path: str) -> None:
  """Fails with the path named if `config.init_from` cannot be reached or does not exist."""
  if not files.exists(path):  # An unreachable bucket is the file layer's error, path named.
    raise errors.MissingPathError(f'config.init_from={path} does not exist: give a converted '
                                  'checkpoint or a training workdir.')


def initial_params(config: ml_collections.ConfigDict, model: models.HINet) -> Any:
  """Parameters from `config.init_from` (a converted checkpoint or a training workdir), or None.

  Returns:
    The parameters as host numpy arrays (each process loads its own copy; `step_lib.init_state`
    lays them out over the mesh), or None without `config.init_from`.
  """
  if not config.init_from:
    return None
  check_init_from(config.init_from)
  from hinet_jax import api  # pylint: disable=g-import-not-at-top
  pre_model, params = api.load_pretrained(config.init_from, backend='xla')
  mismatch = architecture_mismatch(models.model_config(pre_model), model)
  if mismatch:
    raise ValueError(f'config.init_from={config.init_from} holds a different model: '
                     f'{mismatch} (checkpoint, config); set config.model.* to match.')
  logging.info('Initialising from %s.', config.init_from)
  # A training workdir's params come back on one device; host copies fit any mesh.
  return jax.device_get(params)


def plan_data_resume(config: ml_collections.ConfigDict, meta: Dict[str, Any],
                     step: int) -> Tuple[int, bool]:
  """How the data continues from a checkpoint: its data position, or a re-seeded order.

  grain saves one position per process, in a format that depends on the number of workers, so a
  checkpoint written with another `data_layout` cannot restore it. Then the model and optimizer
  resume and the data order is re-seeded deterministically from the step (a new stream: the
  batches differ from the uninterrupted run's, but every rerun draws the same ones).

  Args:
    config: the training config.
    meta: the checkpoint's meta (`data_layout`, `data_stream`; absent in older checkpoints).
    step: the checkpoint's step.

  Returns:
    `(stream, restore_position)`: the stream to create the train iterator with, and whether to
    restore its position from the checkpoint.
  """
  saved = meta.get('data_layout')
  if saved is None or saved == data_layout(config):
    return int(meta.get('data_stream', 0)), True
  logging.warning('Checkpoint %d was written with %s, this run has %s: resuming the model and '
                  'optimizer, and re-seeding the training data order (stream %d) instead of '
                  'restoring its position.', step, saved, data_layout(config), step)
  return step, False


@dataclasses.dataclass
class Start:
  """Where training starts: the state, its shardings, the step, and the data iterator."""

  state: step_lib.TrainState
  shardings: Any
  step: int
  train_iter: Any
  data_stream: int


def restore_or_init(config, model, tx, mesh, mngr,
                    make_train_iter: Optional[Callable[[int], Any]] = None) -> Start:
  """The latest checkpoint of the workdir (state and data position) or a fresh state.

  Args:
    config: the training config (`seed`, `init_from`, `data.num_workers`).
    model: the HINet.
    tx: the optax transformation.
    mesh: the data mesh.
    mngr: the workdir's checkpoint manager.
    make_train_iter: `stream -> grain iterator` (`create_train_iter`); None for no data.

  Returns:
    The `Start`: the iterator is at the checkpoint's data position, or re-seeded
    (`plan_data_resume`).
  """
  make_train_iter = make_train_iter or (lambda stream: None)
  latest = mngr.latest_step()
  if latest is None:
    state, _, shardings = step_lib.init_state(model, tx, mesh, config.seed,
                                              initial_params(config, model))
    return Start(state, shardings, 0, make_train_iter(0), 0)
  meta = checkpointing.read_meta(mngr, latest)
  saved = meta.get('config', {}).get('model')
  mismatch = architecture_mismatch(saved, model) if saved else {}
  if mismatch:
    raise ValueError(f'{mngr.directory} holds checkpoints of a different model: {mismatch} '
                     '(checkpoint, config). Resume with the config.model.* it was trained with, '
                     'or use a new --workdir.')
  stream, restore_position = plan_data_resume(config, meta, latest)
  train_iter = make_train_iter(stream)
  abstract, shardings = step_lib.abstract_state(model, tx, mesh)
  state, _ = checkpointing.restore(mngr, abstract, step=latest,
                                   data_iter=train_iter if restore_position else None)
  logging.info('Resumed from step %d in %s (%d steps skipped so far).', latest, mngr.directory,
               int(state.skipped_steps))
  return Start(state, shardings, latest, train_iter, stream)


def run_is_finished(workdir: files.PathLike) -> bool:
  """Whether WORKDIR/final_metrics.json exists, as process 0 sees it (broadcast to all)."""
  finished = (jax.process_index() == 0 and
              checkpointing.read_final_metrics(workdir) is not None)
  if jax.process_count() == 1:
    return finished
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(finished)))


def create_predict_fn(config: ml_collections.ConfigDict, model: models.HINet,
                      backend: backends.Backend) -> Callable:
  """The validation predict function, at `config.eval.precision` where the config has it."""
  from hinet_jax.evaluation import inference  # pylint: disable=g-import-not-at-top
  if 'precision' not in config.eval:
    return inference.make_predict_fn(model, backend)
  return inference.make_predict_fn(model, backend, precision=config.eval.precision)


# --------------------------------------------------------------------------------------------
# The job.


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: files.PathLike) -> step_lib.TrainState:
  """Trains HINet as `config` says, resuming from `workdir` if it holds checkpoints.

  Args:
    config: the training config (see configs/default.py).
    workdir: where checkpoints, TensorBoard events, model_config.json and final_metrics.json go:
      a local folder or object storage (`gs://bucket/run`).

  Returns:
    The final TrainState (also on SIGTERM, at the step reached).
  """
  validate_config(config)
  # A workdir this process cannot write is one message now, not a failed first save. Each
  # process probes under its own name: each writes its own checkpoint shards.
  files.check_writable(workdir, f'{files.PROBE_FILE}.{jax.process_index()}')
  workdir = checkpointing.workdir_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.create_mesh()
  per_process = sharding.per_process_batch_size(config.batch_size, mesh)
  model = models.create_model(**config.model)
  backend = backends.resolve(config.backend, model)
  logging.info('%d process(es), %d device(s) (%s), backend %s; global batch %d, %d per process.',
               jax.process_count(), jax.device_count(), jax.devices()[0].platform, backend.name,
               config.batch_size, per_process)

  model = backend.build(model)
  checkpointing.write_model_config(workdir, models.model_config(model))
  lr_fn = step_lib.create_learning_rate_fn(config)
  tx = step_lib.create_optimizer(config, lr_fn)
  train_source, val_sets = create_sources(config)
  logging.info('Train source: %d items; validation: %s.', len(train_source),
               ', '.join(f'{name} {len(src)} items' for name, src in val_sets.items()))
  mngr = checkpointing.create_manager(workdir, keep_latest=config.train.keep_checkpoints,
                                      keep_best=config.train.keep_best,
                                      async_save=config.train.async_checkpointing)
  start = restore_or_init(config, model, tx, mesh, mngr,
                          functools.partial(create_train_iter, config, train_source, mesh))
  state, start_step, train_iter = start.state, start.step, start.train_iter

  writer = reporting.create_writer(workdir, config.tensorboard)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()})
  run = Run(config=config, workdir=workdir, backend=backend, mngr=mngr, writer=writer,
            train_iter=train_iter, val_source=next(iter(val_sets.values())), val_sets=val_sets,
            predict_fn=create_predict_fn(config, model, backend),
            step_fn=step_lib.make_train_step(config, lr_fn, start.shardings, mesh,
                                             skip_by_cond=backend.skip_step_by_cond),
            hooks=create_hooks(config, workdir),
            data_meta={'data_layout': data_layout(config), 'data_stream': start.data_stream})
  try:
    if start_step >= config.num_train_steps:
      logging.warning('%s is already at the final step %d (config.num_train_steps=%d): nothing to '
                      'train. Raise --config.num_train_steps to train longer, or use a new '
                      '--workdir.', workdir, start_step, config.num_train_steps)
      if not run_is_finished(workdir):
        final_evaluation(run, start_step, state.params)
      return state
    logging.info('Training from step %d to %d.', start_step, config.num_train_steps)
    with StopSignal() as stop:
      state, step = train_loop(run, state, start_step, stop)
      if step < config.num_train_steps:  # Stopped by SIGTERM; the checkpoint is saved.
        return state
      # The final state first: an error or a preemption during the evaluation loses no training.
      save_checkpoint(run, step, state)
      final_evaluation(run, step, state.params)
    return state
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.flush()
    writer.close()
    if hasattr(train_iter, 'close'):
      train_iter.close()


def _flatten(d: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  """Nested dict -> {'a.b': value} with TensorBoard-friendly values (str for non-scalars)."""
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flatten(v, key + '.'))
    else:
      out[key] = v if isinstance(v, (bool, int, float, str)) else str(v)
  return out
