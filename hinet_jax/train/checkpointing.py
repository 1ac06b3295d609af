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
"""

import json
import os
from typing import Any, Dict, Optional, Tuple

from absl import logging
from etils import epath
import jax
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
    An `ocp.CheckpointManager`. The caller decides when to save (see `save`), so there is no
    save-interval policy here.
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
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


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
  if not path.exists():
    raise errors.MissingPathError(f'{path} not found: {workdir} is not a hinet-jax training '
                                  'workdir (train.py writes model_config.json there).')
  return json.loads(path.read_text())


def read_final_metrics(workdir: files.PathLike) -> Optional[Dict[str, Any]]:
  """WORKDIR/final_metrics.json ({'step', 'psnr', ...}), or None if the run has not finished."""
  path = workdir_path(workdir) / FINAL_METRICS_FILE
  return json.loads(path.read_text()) if path.exists() else None


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
  with ocp.PyTreeCheckpointer() as ckptr:
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True))
  logging.info('Loaded params of step %d (%s) from %s.', step, which, workdir)
  return model_cfg, restored['params']
