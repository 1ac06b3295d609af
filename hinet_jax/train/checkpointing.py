"""Training checkpoints with orbax: state + data iterator + config, latest N and best by PSNR.

Layout of a training workdir:
  WORKDIR/model_config.json          `HINet` constructor kwargs (`models.model_config`)
  WORKDIR/checkpoints/<step>/state    the TrainState (params, optimizer state, counters)
  WORKDIR/checkpoints/<step>/data_iter  grain iterator state, one JSON per process
  WORKDIR/checkpoints/<step>/meta     {'step', 'config'} as JSON
  WORKDIR/checkpoints/<step>/metrics  validation metrics (steps that were evaluated)
  WORKDIR/final_metrics.json         the final step's validation metrics (the run is finished)

WORKDIR may be a local folder or object storage (`gs://bucket/run`): every path here is an
`etils.epath.Path`, the same paths orbax writes through.

Retention is `LatestN` (for resuming) OR `BestN` by validation PSNR (for the best model); the legacy
`max_to_keep` + `best_fn` keeps only the best and can delete the newest checkpoint. Orbax writes a
step into `<step>.orbax-checkpoint-tmp` and renames it when complete (on object storage it writes a
`commit_success.txt` last), so a run killed mid-save leaves the previous step as the latest complete
one; the manager deletes such leftovers at start-up (`cleanup_tmp_directories`).

Object storage: every orbax call that reads or writes runs under the file layer's deadline
(`files.call_with_deadline`, HINET_JAX_STORAGE_TIMEOUT_S), so a stalled or failing store ends a
save, a restore or a listing with one `errors.StorageError` / `StorageTimeoutError` naming the
checkpoint folder or step and what to check (`_StorageGuardedManager`). A failed save never
removes older steps: orbax deletes the steps a new one displaces only after that one commits.
"""

import json
import logging as py_logging
import math
import os
import re
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from hinet_jax import errors
from hinet_jax import files

CHECKPOINT_SUBDIR = 'checkpoints'
MODEL_CONFIG_FILE = 'model_config.json'
# Written by the loop when a run has finished: its final step and validation metrics.
FINAL_METRICS_FILE = 'final_metrics.json'
BEST_METRIC = 'psnr'


def workdir_path(workdir: files.PathLike) -> epath.Path:
  """A workdir as an absolute `epath.Path` (local folders made absolute; `gs://...` as given)."""
  return files.as_path(os.path.abspath(workdir) if files.is_local(workdir) else workdir)


def checkpoint_dir(workdir: files.PathLike) -> epath.Path:
  """Where a training workdir keeps its orbax checkpoints."""
  return workdir_path(workdir) / CHECKPOINT_SUBDIR


def _best_metric(metrics: Dict[str, float]) -> float:
  return float(metrics[BEST_METRIC])


# --------------------------------------------------------------------------------------------
# Storage failures and stalls in orbax's calls.

# gRPC status codes that TensorStore (orbax's array I/O) puts in its ValueErrors when a request
# fails; other ValueErrors (a tree that does not match, a step that exists) are bugs.
_STORAGE_STATUS = re.compile(r'\b(UNAVAILABLE|DEADLINE_EXCEEDED|PERMISSION_DENIED|UNAUTHENTICATED|'
                             r'NOT_FOUND|ABORTED|RESOURCE_EXHAUSTED)\b')
_CLIENT_MODULES = ('aiohttp', 'fsspec', 'gcsfs', 'google')
# Set in the thread that runs a guarded call: calls nested in it run under its deadline.
_GUARDED = threading.local()


class _NotStorage(errors.UserError):
  """Carries an error that is not a storage failure past `files.storage_errors`, unchanged."""

  def __init__(self, error: BaseException):
    super().__init__(str(error))
    self.error = error


def _storage_failure(e: BaseException) -> bool:
  """Whether `e` (or an error it was raised from) is the store failing, not a bug."""
  for _ in range(8):  # The chain of causes, not endless.
    if e is None:
      return False
    if (isinstance(e, (OSError, TimeoutError))
        or type(e).__module__.split('.')[0] in _CLIENT_MODULES
        or (isinstance(e, ValueError) and _STORAGE_STATUS.search(str(e)))):
      return True
    e = e.__cause__ or e.__context__
  return False


def _guarded(path: epath.Path, action: str, fn: Callable[[], Any], nbytes: int = 0) -> Any:
  """`fn()` (an orbax call on `path`) under the storage deadline; storage failures mapped.

  On object storage a stall raises `errors.StorageTimeoutError` and a failure of the store
  `errors.StorageError`, both naming `path`; any other error propagates as raised.
  """
  if getattr(_GUARDED, 'active', False):
    return fn()

  def call():
    _GUARDED.active = True
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except  # sorted here, raised on
      if not _storage_failure(e):
        raise _NotStorage(e) from None
      if isinstance(e, ValueError) and 'DEADLINE_EXCEEDED' in str(e):
        raise TimeoutError(str(e)) from e  # A stall: the stall message, not a generic one.
      raise
    finally:
      _GUARDED.active = False  # The caller's own thread, on a local path.

  try:
    return files.call_with_deadline(path, action, call, nbytes=nbytes)
  except _NotStorage as e:
    error = e.error
  except errors.StorageTimeoutError:
    _release_abandoned_work_at_exit()
    raise
  raise error  # Outside the handler: its traceback and context stay its own.


def _release_abandoned_work_at_exit() -> None:
  """Lets the process exit without waiting for orbax work given up on; once per process.

  Python joins every `concurrent.futures` worker thread at exit, daemon or not
  (`concurrent.futures.thread._python_exit`). orbax's, stuck in a stalled request, would hold the
  process after the error was reported, for the client libraries' own retries (minutes at the
  default deadline). Threads started under a guarded call are daemon threads
  (`files.call_with_deadline`): these are dropped from that join, by a hook that runs before it.
  Both hooks are CPython internals; without them the exit waits for the libraries' retries.
  """
  from concurrent.futures import thread as futures_thread  # pylint: disable=g-import-not-at-top
  register = getattr(threading, '_register_atexit', None)
  workers = getattr(futures_thread, '_threads_queues', None)
  if register is None or workers is None or getattr(_release_abandoned_work_at_exit, 'done', 0):
    return

  def forget_daemon_workers():
    for worker in list(workers):
      if worker.daemon:
        workers.pop(worker, None)

  register(forget_daemon_workers)  # Registered after _python_exit, so run before it.
  _release_abandoned_work_at_exit.done = True


def _nbytes(args: Any) -> int:
  """Bytes of the arrays in orbax `args` (a Composite of Standard/PyTree args): what moves."""
  items = dict(args.items()) if isinstance(args, ocp.args.Composite) else {'': args}
  leaves = jax.tree.leaves([getattr(a, 'item', None) for a in items.values()])
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves
             if hasattr(x, 'shape') and hasattr(x, 'dtype'))


class _OneLineOrbaxErrors(py_logging.Filter):
  """Logs orbax's reports of a failed save in one line, without the traceback.

  orbax raises each such error to the caller too (at `wait_until_finished` or the next save),
  where it becomes one message (or, if it is a bug, a traceback) once.
  """

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.exc_info and f'{os.sep}orbax{os.sep}' in record.pathname:
      error = record.exc_info[1]
      record.msg, record.args = f'{record.getMessage()} ({type(error).__name__}: {error})', ()
      record.exc_info = record.exc_text = None
    return True


def _log_orbax_errors_in_one_line() -> None:
  """Installs `_OneLineOrbaxErrors` on absl's logger (orbax logs through absl), once."""
  logger = py_logging.getLogger('absl')
  if not any(isinstance(f, _OneLineOrbaxErrors) for f in logger.filters):
    logger.addFilter(_OneLineOrbaxErrors())


class _StorageGuardedManager(ocp.CheckpointManager):
  """An `ocp.CheckpointManager` whose storage calls end with one error instead of stalling.

  Opening (listing the steps), save, wait_until_finished, restore, reload, metrics and close
  run under `_guarded`, each naming the checkpoint folder or the step it works on; a call moving
  a state gets one more deadline per `files.BYTES_PER_DEADLINE` of it. all_steps and latest_step
  read the manager's memory. An async save fails in orbax's background threads: save first waits
  for the previous one, so that failure surfaces at the next save or wait_until_finished, naming
  the step that failed.

  After a storage error the manager is spent: its memory may list the step that failed, and the
  call given up on may still hang. Later calls raise that error again at once, but
  wait_until_finished and close return (a `finally:` that closes the manager must not stall
  again, nor hide the error on its way to the user).
  """

  def __init__(self, directory: epath.Path, *, options: ocp.CheckpointManagerOptions):
    self._failure = None
    self._pending = None  # (step, bytes) of the save in flight, for wait_until_finished.
    _log_orbax_errors_in_one_line()
    init = super().__init__
    self._guard(directory, 'open', lambda: init(directory, options=options))

  def _guard(self, path: epath.Path, action: str, fn: Callable[[], Any], nbytes: int = 0) -> Any:
    if self._failure is not None:
      raise self._failure
    try:
      return _guarded(path, action, fn, nbytes)
    except errors.StorageError as e:
      self._failure = e
      raise

  def _step_path(self, step: Optional[int]) -> epath.Path:
    return self.directory if step is None else self.directory / str(step)

  def save(self, step: int, *args, **kwargs) -> bool:
    self.wait_until_finished()
    nbytes = _nbytes(kwargs.get('args'))
    save = super().save
    started = self._guard(self._step_path(step), 'write',
                          lambda: save(step, *args, **kwargs), nbytes)
    if started:
      self._pending = (step, nbytes)
    return started

  def wait_until_finished(self) -> None:
    if self._failure is not None:
      return
    step, nbytes = self._pending or (None, 0)
    self._guard(self._step_path(step), 'write', super().wait_until_finished, nbytes)
    self._pending = None

  def close(self) -> None:
    if self._failure is not None:
      return
    self.wait_until_finished()
    self._guard(self.directory, 'write', super().close)

  def restore(self, step: Optional[int], *args, **kwargs) -> Any:
    restore = super().restore
    return self._guard(self._step_path(step), 'read', lambda: restore(step, *args, **kwargs),
                       _nbytes(kwargs.get('args')))

  def reload(self) -> None:
    self._guard(self.directory, 'list', super().reload)

  def metrics(self, step: int) -> Optional[Any]:
    metrics = super().metrics
    return self._guard(self._step_path(step), 'read', lambda: metrics(step))


def create_manager(workdir: files.PathLike, *, keep_latest: int = 3, keep_best: int = 1,
                   async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
  """The checkpoint manager of a training workdir.

  Args:
    workdir: the training workdir (checkpoints go to WORKDIR/checkpoints).
    keep_latest: how many of the newest checkpoints to keep (for resuming).
    keep_best: how many checkpoints with the highest validation PSNR to keep besides; 0 disables.
    async_save: write in a background thread (`save` then only blocks for the device->host copy).
    read_only: open without creating or cleaning anything (for loading params).

  Returns:
    An `ocp.CheckpointManager` whose storage calls end within the storage deadline with one
    `errors.StorageError` (`_StorageGuardedManager`). The caller decides when to save (see
    `save`), so there is no save-interval policy here.
  """
  policies = [cm.LatestN(n=keep_latest)]
  if keep_best > 0:
    # Checkpoints saved without metrics are ranked by nobody: only LatestN keeps them.
    policies.append(cm.BestN(get_metric_fn=_best_metric, n=keep_best,
                             keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=cm.AnyPreservationPolicy(policies),
      # Still needed beside BestN: without best_fn the metrics are not written and best_step()
      # returns the latest step.
      best_fn=_best_metric, best_mode='max',
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=not read_only,
      read_only=read_only,
      create=not read_only)
  return _StorageGuardedManager(checkpoint_dir(workdir), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, data_iter: Any = None,
         meta: Optional[Dict[str, Any]] = None,
         metrics: Optional[Dict[str, float]] = None) -> bool:
  """Saves `state` (and the data iterator and JSON meta) as checkpoint `step`.

  Args:
    mngr: from `create_manager`.
    step: the number of completed training steps.
    state: the TrainState (jax.Arrays).
    data_iter: a grain `DatasetIterator`, saved so a resume replays the same batches.
    meta: JSON-able dict, e.g. {'config': config.to_dict()}.
    metrics: validation metrics with a 'psnr' key (ranks the checkpoint for BestN), or None.

  Returns:
    Whether a checkpoint was started (False if this step already exists).
  """
  if step in mngr.all_steps():
    logging.info('Checkpoint %d already exists; not saving it again.', step)
    return False
  items = dict(state=ocp.args.StandardSave(state),
               meta=ocp.args.JsonSave(dict(meta or {}, step=int(step))))
  if data_iter is not None:
    import grain  # Only needed when there is an iterator to save.
    items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
  metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
  return mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def restore(mngr: ocp.CheckpointManager, abstract_state: Any, *, data_iter: Any = None,
            step: Optional[int] = None) -> Tuple[Any, Dict[str, Any]]:
  """Restores the state (and, in place, the data iterator) of checkpoint `step` (default latest).

  Args:
    mngr: from `create_manager`.
    abstract_state: pytree of `jax.ShapeDtypeStruct` with shardings (the restore target).
    data_iter: the grain iterator to set to the saved position, or None.
    step: which checkpoint; None for the latest.

  Returns:
    `(state, meta)`.
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No complete checkpoint in {mngr.directory}.')
  items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
  if data_iter is not None:
    import grain
    items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return restored['state'], restored['meta']


def read_meta(mngr: ocp.CheckpointManager, step: int) -> Dict[str, Any]:
  """The JSON meta of checkpoint `step` ({'step', 'config'}), without reading the state."""
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def write_model_config(workdir: files.PathLike, model_cfg: Dict[str, Any]) -> None:
  """Writes WORKDIR/model_config.json atomically (process 0 only).

  Args:
    workdir: the training workdir (local or object storage).
    model_cfg: `models.model_config(model)`.
  """
  if jax.process_index() != 0:
    return
  files.write_text(workdir_path(workdir) / MODEL_CONFIG_FILE,
                   json.dumps(model_cfg, indent=2, sort_keys=True))


def read_model_config(workdir: files.PathLike) -> Dict[str, Any]:
  """Reads WORKDIR/model_config.json.

  Args:
    workdir: a training workdir or a params-only checkpoint dir (local or object storage).

  Returns:
    The `HINet` constructor kwargs.
  """
  path = workdir_path(workdir) / MODEL_CONFIG_FILE
  if not files.exists(path):
    raise errors.MissingPathError(f'{path} not found: {workdir} is not a hinet-jax training '
                                  'workdir (train.py writes model_config.json there).')
  return json.loads(files.read_text(path))


def read_final_metrics(workdir: files.PathLike) -> Optional[Dict[str, Any]]:
  """WORKDIR/final_metrics.json ({'step', 'psnr', ...}), or None if the run has not finished."""
  path = workdir_path(workdir) / FINAL_METRICS_FILE
  return json.loads(files.read_text(path)) if files.exists(path) else None


def _best_step(mngr: ocp.CheckpointManager, workdir: files.PathLike) -> Optional[int]:
  """The step with the highest validation PSNR, counting the final evaluation.

  The final checkpoint is saved before the final evaluation (so an error or a preemption during
  it loses no training), hence without metrics; its PSNR is in final_metrics.json instead.
  """
  scores = {s: _best_metric(m) for s in mngr.all_steps() if (m := mngr.metrics(s))}
  final = read_final_metrics(workdir)
  if final and final.get('step') in mngr.all_steps() and BEST_METRIC in final:
    scores[final['step']] = float(final[BEST_METRIC])
  return max(scores, key=lambda s: (scores[s], s)) if scores else None


def select_step(workdir: files.PathLike, which: str = 'latest') -> int:
  """The checkpoint step of `workdir` that `which` ('latest', 'best' or a step number) names.

  Args:
    workdir: a training workdir.
    which: 'latest', 'best' (highest validation PSNR) or an integer step (as int or str).

  Returns:
    The step.
  """
  mngr = create_manager(workdir, read_only=True)
  try:
    steps = mngr.all_steps()
    if not steps:
      raise errors.MissingPathError(f'No complete checkpoint in {checkpoint_dir(workdir)}.')
    if which == 'latest':
      return mngr.latest_step()
    if which == 'best':
      best = _best_step(mngr, workdir)
      if best is None:
        logging.warning('No evaluated checkpoint in %s; using the latest step.', workdir)
        return mngr.latest_step()
      return best
    step = int(which)
    if step not in steps:
      raise ValueError(f'Step {step} not in {checkpoint_dir(workdir)} (have {sorted(steps)}).')
    return step
  except ValueError as e:
    if 'invalid literal' in str(e):
      raise ValueError(f"which must be 'latest', 'best' or a step number, got {which!r}.") from e
    raise
  finally:
    mngr.close()


def load_params_from_workdir(workdir: files.PathLike,
                             which: str = 'latest') -> Tuple[Dict[str, Any], Any]:
  """Loads only the parameters of a training checkpoint (not the optimizer state).

  Args:
    workdir: a training workdir (with model_config.json and checkpoints/).
    which: 'latest', 'best' (highest validation PSNR) or a step number.

  Returns:
    `(model_config, params)`: the `HINet` kwargs and the parameters as jax.Arrays on the first
    local device.
  """
  from hinet_jax import models  # Local import: checkpointing is below models only for loading.
  model_cfg = read_model_config(workdir)
  step = select_step(workdir, which)
  model = models.create_model(**model_cfg)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          models.abstract_params(model))
  item = {'params': abstract}
  path = checkpoint_dir(workdir) / str(step) / 'state'
  args = ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(item))

  def read():
    with ocp.PyTreeCheckpointer() as ckptr:
      return ckptr.restore(path, args=args)

  restored = _guarded(path, 'read', read, _nbytes(args))
  logging.info('Loaded params of step %d (%s) from %s.', step, which, workdir)
  return model_cfg, restored['params']
