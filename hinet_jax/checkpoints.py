"""Reading checkpoints: a params-only directory or a training workdir -> `(model_config, params)`.

Below both `hinet_jax.api` (which adds the backend) and `hinet_jax.train` (which also writes
workdirs, `train/checkpointing.py`). A training workdir holds
  model_config.json                 `HINet` constructor kwargs
  checkpoints/<step>/{state,data_iter,meta,metrics}   orbax items (`train/checkpointing.py`)
  final_metrics.json                the final validation metrics (the run has finished)
and may be local or on object storage, where every orbax call runs under the file layer's deadline
and a failing store ends it with one `errors.StorageError` naming the folder or step.
"""

import json
import logging as py_logging
import math
import os
import re
import threading
from concurrent.futures import thread as futures_thread
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from hinet_jax import errors
from hinet_jax import files
from hinet_jax import models
from hinet_jax.models import pretrained

CHECKPOINT_SUBDIR = 'checkpoints'
MODEL_CONFIG_FILE = pretrained.MODEL_CONFIG_FILE
FINAL_METRICS_FILE = 'final_metrics.json'
BEST_METRIC = 'psnr'
# gRPC codes TensorStore puts in the ValueErrors of failed requests; other ValueErrors are bugs.
_STORAGE_STATUS = re.compile(r'\b(UNAVAILABLE|DEADLINE_EXCEEDED|PERMISSION_DENIED|UNAUTHENTICATED|'
                             r'NOT_FOUND|ABORTED|RESOURCE_EXHAUSTED)\b')
_CLIENT_MODULES = ('aiohttp', 'fsspec', 'gcsfs', 'google')
_GUARDED = threading.local()  # Calls nested in a guarded call run under its deadline.


def workdir_path(workdir: files.PathLike) -> epath.Path:
  """A workdir as an absolute `epath.Path` (local folders made absolute; `gs://...` as given)."""
  return files.as_path(os.path.abspath(workdir) if files.is_local(workdir) else workdir)


def checkpoint_dir(workdir: files.PathLike) -> epath.Path:
  """Where a training workdir keeps its orbax checkpoints."""
  return workdir_path(workdir) / CHECKPOINT_SUBDIR


def _best_metric(metrics: Dict[str, float]) -> float:
  return float(metrics[BEST_METRIC])


class _NotStorage(errors.UserError):
  """Carries an error that is not a storage failure past `files.storage_errors`, unchanged."""

  def __init__(self, error: BaseException):
    super().__init__(str(error))
    self.error = error


def _storage_failure(e: Optional[BaseException]) -> bool:
  """Whether `e` (or an error it was raised from) is the store failing, not a bug."""
  for _ in range(8):
    if e is None:
      return False
    if (isinstance(e, (OSError, TimeoutError))
        or type(e).__module__.split('.')[0] in _CLIENT_MODULES
        or (isinstance(e, ValueError) and _STORAGE_STATUS.search(str(e)))):
      return True
    e = e.__cause__ or e.__context__
  return False


def guarded(path: epath.Path, action: str, fn: Callable[[], Any], nbytes: int = 0) -> Any:
  """`fn()`, an orbax call on `path`, under the storage deadline with storage failures mapped.

  Args:
    path: the folder or step `fn` works on; errors name it.
    action: 'read', 'write', 'list' or 'open'.
    fn: the call.
    nbytes: bytes it moves (each `files.BYTES_PER_DEADLINE` earns one more deadline).

  Returns:
    What `fn` returns; a stall raises `errors.StorageTimeoutError`, a failing store
    `errors.StorageError`, anything else propagates as raised.
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
        raise TimeoutError(str(e)) from e
      raise
    finally:
      _GUARDED.active = False

  try:
    return files.call_with_deadline(path, action, call, nbytes=nbytes)
  except _NotStorage as e:
    error = e.error
  except errors.StorageTimeoutError:
    _release_abandoned_work_at_exit()
    raise
  raise error  # Outside the handler: its traceback and context stay its own.


def _release_abandoned_work_at_exit() -> None:
  """Lets the process exit without joining orbax threads stuck in a stalled request (once).

  Python joins every `concurrent.futures` worker at exit; a hook registered after that join runs
  before it and drops the daemon workers. Both are CPython internals; without them the exit waits
  for the client libraries' retries.
  """
  register = getattr(threading, '_register_atexit', None)
  workers = getattr(futures_thread, '_threads_queues', None)
  if register is None or workers is None or getattr(_release_abandoned_work_at_exit, 'done', 0):
    return

  def forget_daemon_workers():
    for worker in list(workers):
      if worker.daemon:
        workers.pop(worker, None)

  register(forget_daemon_workers)
  _release_abandoned_work_at_exit.done = True


def nbytes(args: Any) -> int:
  """Bytes of the arrays in orbax `args` (a Composite of Standard/PyTree args): what moves."""
  items = dict(args.items()) if isinstance(args, ocp.args.Composite) else {'': args}
  leaves = jax.tree.leaves([getattr(a, 'item', None) for a in items.values()])
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves
             if hasattr(x, 'shape') and hasattr(x, 'dtype'))


class _OneLineOrbaxErrors(py_logging.Filter):
  """Logs orbax's reports of a failed save in one line; the caller gets the error itself."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.exc_info and f'{os.sep}orbax{os.sep}' in record.pathname:
      error = record.exc_info[1]
      record.msg, record.args = f'{record.getMessage()} ({type(error).__name__}: {error})', ()
      record.exc_info = record.exc_text = None
    return True


def _log_orbax_errors_in_one_line() -> None:
  logger = py_logging.getLogger('absl')
  if not any(isinstance(f, _OneLineOrbaxErrors) for f in logger.filters):
    logger.addFilter(_OneLineOrbaxErrors())


class _StorageGuardedManager(ocp.CheckpointManager):
  """An `ocp.CheckpointManager` whose storage calls run under `guarded`.

  An async save fails in orbax's threads and surfaces at the next save or wait_until_finished,
  naming its step. After a storage error the manager is spent: later calls raise it again, but
  wait_until_finished and close return, so a `finally:` neither stalls nor hides the error.
  """

  def __init__(self, directory: epath.Path, *, options: ocp.CheckpointManagerOptions):
    self._failure = None
    self._pending = None  # (step, bytes) of the save in flight.
    _log_orbax_errors_in_one_line()
    init = super().__init__
    self._guard(directory, 'open', lambda: init(directory, options=options))

  def _guard(self, path: epath.Path, action: str, fn: Callable[[], Any], size: int = 0) -> Any:
    if self._failure is not None:
      raise self._failure
    try:
      return guarded(path, action, fn, size)
    except errors.StorageError as e:
      self._failure = e
      raise

  def _step_path(self, step: Optional[int]) -> epath.Path:
    return self.directory if step is None else self.directory / str(step)

  def save(self, step: int, *args, **kwargs) -> bool:
    self.wait_until_finished()
    size = nbytes(kwargs.get('args'))
    save = super().save
    started = self._guard(self._step_path(step), 'write', lambda: save(step, *args, **kwargs),
                          size)
    if started:
      self._pending = (step, size)
    return started

  def wait_until_finished(self) -> None:
    if self._failure is not None:
      return
    step, size = self._pending or (None, 0)
    self._guard(self._step_path(step), 'write', super().wait_until_finished, size)
    self._pending = None

  def close(self) -> None:
    if self._failure is not None:
      return
    self.wait_until_finished()
    self._guard(self.directory, 'write', super().close)

  def restore(self, step: Optional[int], *args, **kwargs) -> Any:
    restore = super().restore
    return self._guard(self._step_path(step), 'read', lambda: restore(step, *args, **kwargs),
                       nbytes(kwargs.get('args')))

  def reload(self) -> None:
    self._guard(self.directory, 'list', super().reload)

  def metrics(self, step: int) -> Optional[Any]:
    metrics = super().metrics
    return self._guard(self._step_path(step), 'read', lambda: metrics(step))


def create_manager(workdir: files.PathLike, *, keep_latest: int = 3, keep_best: int = 1,
                   async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
  """The checkpoint manager of a training workdir (its storage calls under `guarded`).

  Retention is LatestN (to resume) or BestN by validation PSNR; the legacy `max_to_keep` +
  `best_fn` can delete the newest step. A step killed mid-save stays a tmp folder that the next
  writer deletes, so the previous step remains the latest complete one.

  Args:
    workdir: the training workdir (checkpoints go to WORKDIR/checkpoints).
    keep_latest: how many of the newest checkpoints to keep.
    keep_best: how many of the highest validation PSNR to keep besides; 0 disables.
    async_save: write in a background thread.
    read_only: open without creating or cleaning anything.

  Returns:
    The manager; the caller decides when to save.
  """
  policies = [cm.LatestN(n=keep_latest)]
  if keep_best > 0:
    policies.append(cm.BestN(get_metric_fn=_best_metric, n=keep_best,
                             keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=cm.AnyPreservationPolicy(policies),
      # Without best_fn orbax writes no metrics and best_step() is the latest.
      best_fn=_best_metric, best_mode='max', enable_async_checkpointing=async_save,
      cleanup_tmp_directories=not read_only, read_only=read_only, create=not read_only)
  return _StorageGuardedManager(checkpoint_dir(workdir), options=options)


def read_model_config(workdir: files.PathLike) -> Dict[str, Any]:
  """The `HINet` kwargs in WORKDIR/model_config.json (a workdir or a params-only checkpoint)."""
  path = workdir_path(workdir) / MODEL_CONFIG_FILE
  if not files.exists(path):
    raise errors.MissingPathError(f'{path} not found: {workdir} is not a hinet-jax training '
                                  'workdir (train.py writes model_config.json there).')
  return pretrained.read_model_config(workdir_path(workdir))


def read_meta(mngr: ocp.CheckpointManager, step: int) -> Dict[str, Any]:
  """The JSON meta of checkpoint `step` ({'step', 'config', ...}), without reading the state."""
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def read_final_metrics(workdir: files.PathLike) -> Optional[Dict[str, Any]]:
  """WORKDIR/final_metrics.json ({'step', 'psnr', ...}), or None if the run has not finished."""
  path = workdir_path(workdir) / FINAL_METRICS_FILE
  return json.loads(files.read_text(path)) if files.exists(path) else None


def _best_step(mngr: ocp.CheckpointManager, workdir: files.PathLike) -> Optional[int]:
  """The step of highest validation PSNR; the final step's PSNR is in final_metrics.json."""
  scores = {s: _best_metric(m) for s in mngr.all_steps() if (m := mngr.metrics(s))}
  final = read_final_metrics(workdir)
  if final and final.get('step') in mngr.all_steps() and BEST_METRIC in final:
    scores[final['step']] = float(final[BEST_METRIC])
  return max(scores, key=lambda s: (scores[s], s)) if scores else None


def select_step(workdir: files.PathLike, which: str = 'latest') -> int:
  """The checkpoint step of `workdir` that `which` names.

  Args:
    workdir: a training workdir.
    which: 'latest', 'best' (highest validation PSNR) or a step number (int or str).

  Returns:
    The step.
  """
  if which not in ('latest', 'best') and not str(which).isdigit():
    raise ValueError(f"which must be 'latest', 'best' or a step number, got {which!r}.")
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
  finally:
    mngr.close()


def load_params_from_workdir(workdir: files.PathLike,
                             which: str = 'latest') -> Tuple[Dict[str, Any], Any]:
  """The parameters of one training checkpoint (not the optimizer state).

  Args:
    workdir: a training workdir (with model_config.json and checkpoints/).
    which: 'latest', 'best' (highest validation PSNR) or a step number.

  Returns:
    `(model_config, params)`, the params as jax.Arrays on the first local device.
  """
  model_cfg = read_model_config(workdir)
  step = select_step(workdir, which)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          models.abstract_params(models.create_model(**model_cfg)))
  item = {'params': abstract}
  path = checkpoint_dir(workdir) / str(step) / 'state'
  args = ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(item))

  def read():
    with ocp.PyTreeCheckpointer() as ckptr:
      return ckptr.restore(path, args=args)

  restored = guarded(path, 'read', read, nbytes(args))
  logging.info('Loaded params of step %d (%s) from %s.', step, which, workdir)
  return model_cfg, restored['params']


def load(directory: files.PathLike, which: str = 'latest') -> Tuple[Dict[str, Any], Any]:
  """`(model_config, params)` of a params-only checkpoint or of a training workdir.

  Args:
    directory: local or `gs://...`: a converted/exported/`save_params` checkpoint, or a workdir.
    which: for a workdir, 'latest', 'best' (by validation PSNR) or a step number.

  Returns:
    The `HINet` kwargs and the parameters.
  """
  if pretrained.is_params_checkpoint(directory):
    model_cfg = pretrained.read_model_config(directory)
    return model_cfg, pretrained.load_params(directory, models.create_model(**model_cfg))
  if files.is_file(files.as_path(directory) / MODEL_CONFIG_FILE):
    return load_params_from_workdir(directory, which=which)
  if not files.is_dir(directory):  # Asked only once the two layouts are not found.
    raise errors.MissingPathError(
        f'No checkpoint directory at {directory}: check the path (for gs://, the bucket and '
        'prefix), or convert official weights there with `python -m hinet_jax.convert`.')
  raise errors.MissingPathError(
      f'{directory} is neither a complete converted checkpoint (it needs '
      f'{MODEL_CONFIG_FILE} and {pretrained.PARAMS_DIR}/) nor a training workdir with '
      'checkpoints. Convert official weights with '
      '`python -m hinet_jax.convert --torch_checkpoint=F.pth --output=DIR`.')
