"""Where a run starts: the workdir's latest checkpoint, `config.init_from`, or a fresh state."""

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from hinet_jax import checkpoints
from hinet_jax import errors
from hinet_jax import files
from hinet_jax import models
from hinet_jax.train import checkpointing
from hinet_jax.train import step as step_lib

# Model fields a checkpoint and the config that resumes from it may differ in (cast on restore).
_NON_ARCHITECTURE = ('dtype', 'param_dtype')


def data_layout(config: ml_collections.ConfigDict) -> Dict[str, int]:
  """What the saved data position depends on: grain saves one state per process, per worker."""
  return {'process_count': jax.process_count(), 'num_workers': config.data.num_workers}


def plan_data_resume(config: ml_collections.ConfigDict, meta: Dict[str, Any],
                     step: int) -> Tuple[int, bool]:
  """How the data continues from a checkpoint: its data position, or an order re-seeded by step.

  Args:
    config: the training config.
    meta: the checkpoint's meta (`data_layout`, `data_stream`; absent in older checkpoints).
    step: the checkpoint's step.

  Returns:
    `(stream, restore_position)`: the stream to create the train iterator with, and whether to
    restore its position (not across another `data_layout`; every rerun then draws the same).
  """
  saved = meta.get('data_layout')
  if saved is None or saved == data_layout(config):
    return int(meta.get('data_stream', 0)), True
  logging.warning('Checkpoint %d was written with %s, this run has %s: resuming the model and '
                  'optimizer, and re-seeding the training data order (stream %d) instead of '
                  'restoring its position.', step, saved, data_layout(config), step)
  return step, False


def architecture_mismatch(saved: Dict[str, Any], model: models.HINet) -> Dict[str, Tuple]:
  """{field: (stored, current)} where a stored model config (older keys dropped) and `model` differ."""
  stored, current = models.model_config(models.create_model(**saved)), models.model_config(model)
  return {k: (stored.get(k), v) for k, v in current.items()
          if k not in _NON_ARCHITECTURE and stored.get(k) != v}


def model_overrides(mismatch: Dict[str, Tuple]) -> str:
  """The `--config.model.*` flags that give a config the stored architecture."""
  return ' '.join(f'--config.model.{k}={stored}' for k, (stored, _) in sorted(mismatch.items()))


def check_init_from(path: str) -> None:
  """Fails with the path named if `config.init_from` cannot be reached or does not exist."""
  if not files.exists(path):  # An unreachable bucket is the file layer's error, path named.
    raise errors.MissingPathError(f'config.init_from={path} does not exist: give a converted '
                                  'checkpoint or a training workdir.')


def initial_params(config: ml_collections.ConfigDict, model: models.HINet) -> Any:
  """Host copies of the params of `config.init_from` (any mesh fits them), or None without it."""
  if not config.init_from:
    return None
  check_init_from(config.init_from)
  saved, params = checkpoints.load(config.init_from)
  mismatch = architecture_mismatch(saved, model)
  if mismatch:
    raise ValueError(f'config.init_from={config.init_from} holds a different model: '
                     f'{mismatch} (checkpoint, config); pass {model_overrides(mismatch)}.')
  logging.info('Initialising from %s.', config.init_from)
  return jax.device_get(params)


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
  """The `Start` from `mngr`'s latest checkpoint (its data position or a re-seeded order), or a
  fresh one (`config.init_from` or `config.seed`); `make_train_iter(stream)` builds the data."""
  make_train_iter = make_train_iter or (lambda stream: None)
  latest = mngr.latest_step()
  if latest is None:
    state, _, shardings = step_lib.init_state(model, tx, mesh, config.seed,
                                              initial_params(config, model))
    return Start(state, shardings, 0, make_train_iter(0), 0)
  meta = checkpoints.read_meta(mngr, latest)
  saved = meta.get('config', {}).get('model')
  mismatch = architecture_mismatch(saved, model) if saved else {}
  if mismatch:
    raise ValueError(f'{mngr.directory} holds checkpoints of a different model: {mismatch} '
                     f'(checkpoint, config). Resume with {model_overrides(mismatch)}, or use a '
                     'new --workdir.')
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
  finished = jax.process_index() == 0 and checkpoints.read_final_metrics(workdir) is not None
  if jax.process_count() == 1:
    return finished
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(finished)))
