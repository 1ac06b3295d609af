"""HINet training: sharded, resumable, observable. `train_and_evaluate(config, workdir)` is the job.

config -> mesh -> grain pipeline -> model on its backend and optimizer -> the workdir's latest
checkpoint, `config.init_from` or a fresh state (`resume.py`) -> one compiled, donated train step
per batch -> metrics, validation (`validation.py`), checkpoints -> WORKDIR/final_metrics.json.
A step with a non-finite loss or gradient leaves the state unchanged and is counted; too many in a
row stop the run. SIGTERM saves and returns (`preemption.py`). The final state is saved before the
final evaluation, so a failure there loses no training.
"""

import collections
import dataclasses
import functools
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from absl import logging
import jax
import ml_collections

from hinet_jax import backends
from hinet_jax import checkpoints
from hinet_jax import files
from hinet_jax import models
from hinet_jax.data import datasets
from hinet_jax.data import input_pipeline
from hinet_jax.evaluation import inference
from hinet_jax.train import checkpointing
from hinet_jax.train import config_checks
from hinet_jax.train import preemption
from hinet_jax.train import reporting
from hinet_jax.train import resume
from hinet_jax.train import sharding
from hinet_jax.train import step as step_lib
from hinet_jax.train import validation


def create_train_iter(config: ml_collections.ConfigDict, source: Any, mesh: jax.sharding.Mesh,
                      stream: int = 0):
  """The checkpointable grain iterator of globally sharded training batches; `stream` (mixed into
  the seeds) is 0, or the step when a resume re-seeds (`resume.plan_data_resume`)."""
  d = config.data
  return input_pipeline.create_train_iter(
      source, batch_size=config.batch_size, crop_size=d.crop_size, augment=d.augment,
      seed=config.seed, num_workers=d.num_workers, num_threads=d.num_threads,
      prefetch=d.prefetch, data_sharding=sharding.batch_sharding(mesh),
      shard_by_process=d.shard_by_process, stream=stream)


def create_hooks(config: ml_collections.ConfigDict, workdir: files.PathLike) -> List[Callable]:
  """A trace of `config.train.profile_steps` steps if `config.train.profile`, else none."""
  if not (config.train.profile and jax.process_index() == 0):
    return []
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top  # Imports TensorFlow.
  return [periodic_actions.Profile(
      logdir=str(workdir), num_profile_steps=config.train.profile_steps,
      first_profile=config.train.profile_first_step, profile_duration_ms=None)]


def check_nonfinite(metrics: step_lib.TrainMetrics, step: int, limit: int) -> None:
  """Raises once `limit` steps in a row (`config.train.max_consecutive_nonfinite`) were skipped."""
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
  """Train steps dispatched and not yet fetched, oldest first; fetching checks and merges them."""

  def __init__(self, limit: int):
    self._limit = limit
    self._queue = collections.deque()
    self._period = None

  def __len__(self) -> int:
    return len(self._queue)

  def add(self, step: int, metrics: step_lib.TrainMetrics) -> None:
    self._queue.append((step, metrics))

  def fetch(self, keep: int = 0) -> None:
    """Fetches the oldest steps until at most `keep` are left in flight."""
    while len(self._queue) > keep:
      step, metrics = self._queue.popleft()
      metrics = jax.device_get(metrics)
      check_nonfinite(metrics, step, self._limit)
      self._period = metrics if self._period is None else self._period.merge(metrics)

  def take_period(self) -> step_lib.TrainMetrics:
    """Every step's metrics since the last call, merged."""
    self.fetch()
    period, self._period = self._period, None
    return period


@dataclasses.dataclass
class Run:
  """What the loop needs besides the state; `data_meta` is saved with every checkpoint."""

  config: ml_collections.ConfigDict
  workdir: Any
  backend: backends.Backend
  mngr: Any
  writer: Any
  train_iter: Any
  step_fn: Callable
  hooks: List[Callable]
  validator: Optional[validation.Validation] = None
  data_meta: Dict[str, Any] = dataclasses.field(default_factory=dict)


def save_checkpoint(run: Run, step: int, state: step_lib.TrainState,
                    val_metrics: Optional[Dict[str, float]] = None) -> None:
  """Checkpoints state + data position + config (+ validation PSNR, which ranks it)."""
  checkpointing.save(run.mngr, step, state, data_iter=run.train_iter,
                     meta={'config': run.config.to_dict(), **run.data_meta},
                     metrics=None if val_metrics is None else {'psnr': val_metrics['psnr']})


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
               stop: preemption.StopSignal) -> Tuple[step_lib.TrainState, int]:
  """Steps from `start_step` to `config.num_train_steps`, or until SIGTERM.

  The next batch is read while the last step runs; then the oldest steps are fetched until fewer
  than the backend's `calls_in_flight` are, and the next step is dispatched (on CPU one: a step's
  temporaries are not allocated beside the running one's).

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
      break  # The final checkpoint and evaluation follow in train_and_evaluate.
    val_metrics = None
    if step % cfg.eval_every_steps == 0:
      val_metrics = run.validator.run(step, state.params)
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


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: files.PathLike) -> step_lib.TrainState:
  """Trains HINet as `config` says, resuming from `workdir` if it holds checkpoints.

  Args:
    config: the training config (see configs/default.py).
    workdir: checkpoints, TensorBoard events, model_config.json and final_metrics.json: a local
      folder or object storage (`gs://bucket/run`).

  Returns:
    The final TrainState (also on SIGTERM, at the step reached).
  """
  config_checks.validate_config(config)
  # One message now, not a failed first save; each process writes its own shards, so each probes.
  files.check_writable(workdir, f'{files.PROBE_FILE}.{jax.process_index()}')
  workdir = checkpoints.workdir_path(workdir)
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
  train_source = datasets.create_source(config.data.train)
  val_sets = dict(datasets.create_val_sources(config.data.val))
  logging.info('Train source: %d items; validation: %s.', len(train_source),
               ', '.join(f'{name} {len(src)} items' for name, src in val_sets.items()))
  mngr = checkpoints.create_manager(workdir, keep_latest=config.train.keep_checkpoints,
                                    keep_best=config.train.keep_best,
                                    async_save=config.train.async_checkpointing)
  start = resume.restore_or_init(config, model, tx, mesh, mngr,
                                 functools.partial(create_train_iter, config, train_source, mesh))
  state, start_step, train_iter = start.state, start.step, start.train_iter

  writer = reporting.create_writer(workdir, config.tensorboard)
  if start_step == 0:
    writer.write_hparams(_flatten(config.to_dict()))
  run = Run(config=config, workdir=workdir, backend=backend, mngr=mngr, writer=writer,
            train_iter=train_iter,
            step_fn=step_lib.make_train_step(config, lr_fn, start.shardings, mesh,
                                             skip_by_cond=backend.skip_step_by_cond),
            hooks=create_hooks(config, workdir),
            validator=validation.Validation(
                config=config, workdir=workdir, writer=writer, val_sets=val_sets,
                predict_fn=inference.Forward(model, backend, precision=config.eval.precision)),
            data_meta={'data_layout': resume.data_layout(config),
                       'data_stream': start.data_stream})
  try:
    if start_step >= config.num_train_steps:
      logging.warning('%s is already at the final step %d (config.num_train_steps=%d): nothing to '
                      'train. Raise --config.num_train_steps to train longer, or use a new '
                      '--workdir.', workdir, start_step, config.num_train_steps)
      if not resume.run_is_finished(workdir):
        run.validator.final(start_step, state.params)
      return state
    logging.info('Training from step %d to %d.', start_step, config.num_train_steps)
    with preemption.StopSignal() as stop:
      state, step = train_loop(run, state, start_step, stop)
      if step < config.num_train_steps:  # Stopped by SIGTERM; the checkpoint is saved.
        return state
      save_checkpoint(run, step, state)  # Before the evaluation: a failure there loses no steps.
      run.validator.final(step, state.params)
    return state
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.flush()
    writer.close()
    if hasattr(train_iter, 'close'):
      train_iter.close()
