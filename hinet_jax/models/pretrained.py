"""Params-only checkpoints: the format the converter writes and `eval.py`/export/fine-tuning read.

A checkpoint directory holds
  `params/`            an orbax StandardCheckpointer checkpoint of the Flax params, and
  `model_config.json`  the `HINet` constructor arguments,
so it describes itself: `hinet_jax.load_pretrained(dir)` needs nothing else. The directory may be
local or on object storage (`gs://...`); `model_config.json` is written last and is the marker that
the checkpoint is complete (object storage has no atomic rename), so a folder without it is refused.
"""

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from hinet_jax import errors
from hinet_jax import files
from hinet_jax.models import hinet
from hinet_jax.models import presets

MODEL_CONFIG_FILE = 'model_config.json'
PARAMS_DIR = 'params'


def is_params_checkpoint(directory: files.PathLike) -> bool:
  """Whether `directory` is a complete params-only checkpoint written by `save_params`."""
  directory = files.as_path(directory)
  return files.is_file(directory / MODEL_CONFIG_FILE) and files.is_dir(directory / PARAMS_DIR)


def save_params(directory: files.PathLike, params: Any, model_config: Mapping[str, Any],
                overwrite: bool = False) -> str:
  """Writes `params` and `model_config` as a params-only checkpoint at `directory`.

  The checkpoint is built in a staging folder and published whole (`files.staged_dir`), so an
  interrupted save never leaves a half-written checkpoint under `directory` nor replaces a good
  one.

  Args:
    directory: destination, local or `gs://...`; must not exist unless `overwrite`.
    params: Flax params (numpy or jax arrays).
    model_config: `HINet` constructor kwargs (see `models.model_config`).
    overwrite: replace an existing checkpoint at `directory`.

  Returns:
    The path written (absolute, for a local one).
  """
  directory = files.new_output(directory, overwrite)
  with files.staged_dir(directory, marker=MODEL_CONFIG_FILE) as staging:
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(staging, PARAMS_DIR), jax.tree.map(np.asarray, params))
    ckptr.wait_until_finished()
    ckptr.close()
    files.write_text(os.path.join(staging, MODEL_CONFIG_FILE),
                     json.dumps(dict(model_config), indent=2, sort_keys=True))
  return os.fspath(directory)


def read_model_config(directory: files.PathLike) -> dict:
  """The `HINet` kwargs stored in a checkpoint directory."""
  path = files.as_path(directory) / MODEL_CONFIG_FILE
  try:
    return json.loads(files.read_text(path))
  except json.JSONDecodeError as e:
    raise errors.InvalidInputError(f'{path} is not valid JSON ({e}); re-create the checkpoint '
                                   '(python -m hinet_jax.convert or save_params).') from e


def load_params(directory: files.PathLike, model: hinet.HINet) -> Any:
  """Restores the params of a params-only checkpoint, checked against `model`'s shapes."""
  abstract = presets.abstract_params(model)
  path = files.as_path(directory) / PARAMS_DIR
  if files.is_local(path):
    path = os.path.abspath(path)
  ckptr = ocp.StandardCheckpointer()
  try:
    return ckptr.restore(path, abstract)
  finally:
    ckptr.close()
