"""HINet training: sharded, resumable, observable. `train_and_evaluate(config, workdir)` is the job.

Data flow: config -> mesh over all devices -> grain pipeline (batches split over 'data') -> model
on the chosen backend and optimizer -> restore the latest checkpoint of the workdir (or init /
`config.init_from`) -> loop of one compiled, donated train step (`hinet_jax.train.step`) -> clu
scalars/images, validation, orbax checkpoints -> WORKDIR/final_metrics.json.

Robustness:
  * a step whose loss or gradient norm is not finite leaves params and optimizer state unchanged
    and is counted; after `config.train.max_consecutive_nonfinite` such steps in a row the run
    stops with `FloatingPointError`, its checkpoints untouched;
  * SIGTERM (preemption, scheduler) saves a checkpoint at the step reached and returns cleanly;
  * re-running the same command resumes from the last complete checkpoint, data position included.
"""

import collections
import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from hinet_jax import backends
from hinet_jax import models
from hinet_jax.evaluation import metrics as metrics_lib
from hinet_jax.train import checkpointing
from hinet_jax.train import losses
from hinet_jax.train import sharding
from hinet_jax.train import step as step_lib

FINAL_METRICS_FILE = 'final_metrics.json'
PANEL_FILE = 'panel_{name}.png'
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


# --------------------------------------------------------------------------------------------
# Data.


def create_sources(config: ml_collections.ConfigDict) -> Tuple[Any, Any]:
  """The train and validation sources of `config.data.train` / `config.data.val`."""
  from hinet_jax.data import datasets  # pylint: disable=g-import-not-at-top
  return datasets.create_source(config.data.train), datasets.create_source(config.data.val)


def create_train_iter(config: ml_collections.ConfigDict, source: Any, mesh: jax.sharding.Mesh):
  """The checkpointable grain iterator of globally sharded training batches."""
  from hinet_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  d = config.data
  return input_pipeline.create_train_iter(
      source, batch_size=config.batch_size, crop_size=d.crop_size, augment=d.augment,
      seed=config.seed, num_workers=d.num_workers, num_threads=d.num_threads,
      prefetch=d.prefetch, data_sharding=sharding.batch_sharding(mesh),
      shard_by_process=d.shard_by_process)


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
             source: Any) -> Dict[str, float]:
  """Validation PSNR/SSIM of the restored and of the degraded images, averaged over images.

  Equal-sized images (`config.eval.batched`) go through fixed-shape, mask-padded batches (one
  compile); others one by one, whole or in `config.eval.tile` tiles (`protocols.evaluate_source`).

  Args:
    predict_fn: jitted `(params, lq) -> restored` (the same object every call: no recompiles).
    params: the parameters.
    config: the training config (`config.data.eval_batch_size`, `config.eval`).
    source: the validation source.

  Returns:
    {'psnr', 'ssim', 'input_psnr', 'input_ssim', 'num_images'} as Python numbers.
  """
  from hinet_jax.evaluation import protocols  # pylint: disable=g-import-not-at-top
  result = protocols.evaluate_source(predict_fn, params, source, eval_protocol(config),
                                     tile=config.eval.tile or None,
                                     batch_size=config.data.eval_batch_size)
  return {k: (int(v) if k == 'num_images' else float(v)) for k, v in result.items()}


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


def save_panel_png(path: str, panel: np.ndarray) -> None:
  """Writes a float [0, 1] HWC panel as an 8-bit PNG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.round(np.clip(panel, 0, 1) * 255).astype(np.uint8)).save(path)


# --------------------------------------------------------------------------------------------
# Loop helpers.


class StopSignal:
  """Context manager that turns SIGTERM into a flag the loop polls (restores the old handler)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning('Received signal %d: saving a checkpoint and stopping.', signum)
    self.requested = True

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False

  def agreed(self) -> bool:
    """Whether any process was asked to stop (a collective on multi-process runs)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
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
  """What the loop needs besides the state: built once by `train_and_evaluate`."""

  config: ml_collections.ConfigDict
  workdir: str
  backend: backends.Backend
  mngr: Any
  writer: Any
  train_iter: Any
  val_source: Any
  predict_fn: Callable
  step_fn: Callable
  hooks: List[Callable]


def save_checkpoint(run: Run, step: int, state: step_lib.TrainState,
                    val_metrics: Optional[Dict[str, float]] = None) -> None:
  """Checkpoints state + data position + config (+ validation metrics for BestN)."""
  checkpointing.save(run.mngr, step, state, data_iter=run.train_iter,
                     meta={'config': run.config.to_dict()},
                     metrics=None if val_metrics is None else {'psnr': val_metrics['psnr']})


def run_eval(run: Run, step: int, params: Any) -> Dict[str, float]:
  """Validation metrics and image panels, written to TensorBoard; returns the metrics."""
  result = evaluate(run.predict_fn, params, run.config, run.val_source)
  run.writer.write_scalars(step, {f'eval/{k}': v for k, v in result.items()})
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
  logging.info('Step %d: loss %.4f, train PSNR %.2f dB, lr %.3g, |g| %.3g, %.2f steps/s.', step,
               scalars['train/loss'], scalars['train/psnr'], scalars['train/lr'],
               scalars['train/grad_norm'], scalars['train/steps_per_sec'])


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
    # Multi-process runs agree on stopping at log steps only (it is a collective).
    if (jax.process_count() == 1 or step % cfg.log_every_steps == 0) and stop.agreed():
      dispatched.fetch()
      save_checkpoint(run, step, state)
      logging.warning('Stopped by SIGTERM at step %d; checkpoint saved in %s. Run the same '
                      'command again to resume.', step, run.workdir)
      return state, step
  dispatched.fetch()
  return state, step


def final_evaluation(run: Run, step: int, params: Any) -> Dict[str, Any]:
  """Final validation (+ NLM baseline and a before/after PNG if configured) -> final_metrics.json.

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
  if jax.process_index() == 0:
    if run.config.eval.panel_image >= 0 and len(run.val_source):
      item = run.val_source[run.config.eval.panel_image % len(run.val_source)]
      restored, = restore_items(run.predict_fn, params, run.config, [item])
      path = os.path.join(run.workdir, PANEL_FILE.format(name=item['name']))
      save_panel_png(path, np.concatenate([image_ops.to_float32(item['lq']), restored,
                                           image_ops.to_float32(item['gt'])], axis=1))
      result['panel'] = os.path.basename(path)
    with open(os.path.join(run.workdir, FINAL_METRICS_FILE), 'w') as f:
      json.dump(result, f, indent=2, sort_keys=True)
  logging.info('Final metrics: %s', json.dumps(result, sort_keys=True))
  return result


# --------------------------------------------------------------------------------------------
# Setup helpers.


def create_writer(workdir: str):
  """clu writer: TensorBoard + log on process 0, log only elsewhere (imports TensorFlow)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0,
                                              asynchronous=True)


def create_hooks(config: ml_collections.ConfigDict, workdir: str, writer) -> List[Callable]:
  """ReportProgress (steps/s and ETA in the log) and, if `config.train.profile`, a trace."""
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  hooks = [periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer,
                                           every_steps=config.log_every_steps)]
  if config.train.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(
        logdir=workdir, num_profile_steps=config.train.profile_steps,
        first_profile=config.train.profile_first_step, profile_duration_ms=None))
  return hooks


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


def initial_params(config: ml_collections.ConfigDict, model: models.HINet) -> Any:
  """Parameters from `config.init_from` (a converted/pretrained checkpoint), or None."""
  if not config.init_from:
    return None
  from hinet_jax import api  # pylint: disable=g-import-not-at-top
  pre_model, params = api.load_pretrained(config.init_from, backend='xla')
  mismatch = architecture_mismatch(models.model_config(pre_model), model)
  if mismatch:
    raise ValueError(f'config.init_from={config.init_from} holds a different model: '
                     f'{mismatch} (checkpoint, config); set config.model.* to match.')
  logging.info('Initialising from %s.', config.init_from)
  return params


def restore_or_init(config, model, tx, mesh, mngr,
                    train_iter) -> Tuple[step_lib.TrainState, Any, int]:
  """The latest checkpoint of the workdir (state and data position) or a fresh state.

  Args:
    config: the training config (`seed`, `init_from`).
    model: the HINet.
    tx: the optax transformation.
    mesh: the data mesh.
    mngr: the workdir's checkpoint manager.
    train_iter: the grain iterator, moved in place to the checkpoint's data position.

  Returns:
    `(state, shardings, start_step)`.
  """
  latest = mngr.latest_step()
  if latest is None:
    state, _, shardings = step_lib.init_state(model, tx, mesh, config.seed,
                                              initial_params(config, model))
    return state, shardings, 0
  saved = checkpointing.read_meta(mngr, latest).get('config', {}).get('model')
  mismatch = architecture_mismatch(saved, model) if saved else {}
  if mismatch:
    raise ValueError(f'{mngr.directory} holds checkpoints of a different model: {mismatch} '
                     '(checkpoint, config). Resume with the config.model.* it was trained with, '
                     'or use a new --workdir.')
  abstract, shardings = step_lib.abstract_state(model, tx, mesh)
  state, _ = checkpointing.restore(mngr, abstract, data_iter=train_iter, step=latest)
  logging.info('Resumed from step %d in %s (%d steps skipped so far).', latest, mngr.directory,
               int(state.skipped_steps))
  return state, shardings, latest


def read_final_metrics(workdir: str) -> Optional[Dict[str, Any]]:
  """WORKDIR/final_metrics.json, or None if the run has not finished."""
  path = os.path.join(workdir, FINAL_METRICS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# --------------------------------------------------------------------------------------------
# The job.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> step_lib.TrainState:
  """Trains HINet as `config` says, resuming from `workdir` if it holds checkpoints.

  Args:
    config: the training config (see configs/default.py).
    workdir: where checkpoints, TensorBoard events, model_config.json and final_metrics.json go.

  Returns:
    The final TrainState (also on SIGTERM, at the step reached).
  """
  validate_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.create_mesh()
  per_process = sharding.per_process_batch_size(config.batch_size, mesh)
  backend = backends.resolve(config.backend)
  logging.info('%d process(es), %d device(s) (%s), backend %s; global batch %d, %d per process.',
               jax.process_count(), jax.device_count(), jax.devices()[0].platform, backend.name,
               config.batch_size, per_process)

  model = backend.build(models.create_model(**config.model))
  checkpointing.write_model_config(workdir, models.model_config(model))
  lr_fn = step_lib.create_learning_rate_fn(config)
  tx = step_lib.create_optimizer(config, lr_fn)
  train_source, val_source = create_sources(config)
  logging.info('Train source: %d items; validation: %d items.', len(train_source), len(val_source))
  train_iter = create_train_iter(config, train_source, mesh)
  mngr = checkpointing.create_manager(workdir, keep_latest=config.train.keep_checkpoints,
                                      keep_best=config.train.keep_best,
                                      async_save=config.train.async_checkpointing)
  state, shardings, start_step = restore_or_init(config, model, tx, mesh, mngr, train_iter)

  writer = create_writer(workdir)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()})
  from hinet_jax.evaluation import inference  # pylint: disable=g-import-not-at-top
  run = Run(config=config, workdir=workdir, backend=backend, mngr=mngr, writer=writer,
            train_iter=train_iter, val_source=val_source,
            predict_fn=inference.make_predict_fn(model, backend),
            step_fn=step_lib.make_train_step(config, lr_fn, shardings, mesh,
                                             skip_by_cond=backend.skip_step_by_cond),
            hooks=create_hooks(config, workdir, writer))
  try:
    if start_step >= config.num_train_steps:
      logging.warning('%s is already at the final step %d (config.num_train_steps=%d): nothing to '
                      'train. Raise --config.num_train_steps to train longer, or use a new '
                      '--workdir.', workdir, start_step, config.num_train_steps)
      if read_final_metrics(workdir) is None:
        final_evaluation(run, start_step, state.params)
      return state
    logging.info('Training from step %d to %d.', start_step, config.num_train_steps)
    with StopSignal() as stop:
      state, step = train_loop(run, state, start_step, stop)
    if step < config.num_train_steps:  # Stopped by SIGTERM; the checkpoint is saved.
      return state
    final = final_evaluation(run, step, state.params)
    save_checkpoint(run, step, state, final)
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
