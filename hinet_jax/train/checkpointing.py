"""Training checkpoints: the TrainState, the grain iterator's position and JSON meta per step.

The workdir's layout, its checkpoint manager and the readers live in `hinet_jax.checkpoints`;
this module writes and resumes what only training needs.
"""

import json
from typing import Any, Dict, Optional, Tuple

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp

from hinet_jax import checkpoints
from hinet_jax import files


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, data_iter: Any = None,
         meta: Optional[Dict[str, Any]] = None,
         metrics: Optional[Dict[str, float]] = None) -> bool:
  """Saves `state`, the grain iterator's position, JSON `meta` and `metrics` (its 'psnr' ranks
  the step for BestN) as checkpoint `step`; False if that step exists."""
  if step in mngr.all_steps():
    logging.info('Checkpoint %d already exists; not saving it again.', step)
    return False
  items = dict(state=ocp.args.StandardSave(state),
               meta=ocp.args.JsonSave(dict(meta or {}, step=int(step))))
  if data_iter is not None:
    items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
  metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
  return mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def restore(mngr: ocp.CheckpointManager, abstract_state: Any, *, data_iter: Any = None,
            step: Optional[int] = None) -> Tuple[Any, Dict[str, Any]]:
  """`(state, meta)` of checkpoint `step` (default latest) into `abstract_state` (with shardings);
  `data_iter`, if given, is set to the saved position in place."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No complete checkpoint in {mngr.directory}.')
  items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
  if data_iter is not None:
    items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return restored['state'], restored['meta']


def write_model_config(workdir: files.PathLike, model_cfg: Dict[str, Any]) -> None:
  """Writes WORKDIR/model_config.json atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  files.write_text(checkpoints.workdir_path(workdir) / checkpoints.MODEL_CONFIG_FILE,
                   json.dumps(model_cfg, indent=2, sort_keys=True))
