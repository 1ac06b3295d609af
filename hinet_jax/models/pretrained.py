"""Params-only checkpoints: the format the converter writes and `eval.py`/export/fine-tuning read.

A checkpoint directory holds
  `params/`            an orbax StandardCheckpointer checkpoint of the Flax params, and
  `model_config.json`  the `HINet` constructor arguments,
so it describes itself: `hinet_jax.load_pretrained(dir)` needs nothing else.
"""

import json
import os
import shutil
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from hinet_jax import errors
from hinet_jax.models import hinet
from hinet_jax.models import presets

MODEL_CONFIG_FILE = 'model_config.json'
PARAMS_DIR = 'params'


def is_params_checkpoint(directory: str) -> bool:
  """Whether `directory` is a params-only checkpoint written by `save_params`."""
  return (os.path.isfile(os.path.join(directory, MODEL_CONFIG_FILE)) and
          os.path.isdir(os.path.join(directory, PARAMS_DIR)))


def save_params(directory: str, params: Any, model_config: Mapping[str, Any],
                overwrite: bool = False) -> str:
  """Writes `params` and `model_config` as a params-only checkpoint at `directory`.

  The checkpoint is written into a temporary sibling directory and renamed into place only once
  complete, so an interrupted save never leaves a half-written checkpoint under `directory`.

  Args:
    directory: destination; must not exist unless `overwrite`.
    params: Flax params (numpy or jax arrays).
    model_config: `HINet` constructor kwargs (see `models.model_config`).
    overwrite: replace an existing checkpoint at `directory`.

  Returns:
    The absolute path written.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not overwrite:
    raise errors.OutputExistsError(f'{directory} already exists; choose another --output or '
                                   'pass --overwrite to replace it.')
  tmp = directory + '.tmp-partial'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(tmp, PARAMS_DIR), jax.tree.map(np.asarray, params))
  ckptr.wait_until_finished()
  ckptr.close()
  with open(os.path.join(tmp, MODEL_CONFIG_FILE), 'w') as f:
    json.dump(dict(model_config), f, indent=2, sort_keys=True)
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.replace(tmp, directory)
  return directory


def read_model_config(directory: str) -> dict:
  """The `HINet` kwargs stored in a checkpoint directory."""
  path = os.path.join(directory, MODEL_CONFIG_FILE)
  with open(path) as f:
    return json.load(f)


def load_params(directory: str, model: hinet.HINet) -> Any:
  """Restores the params of a params-only checkpoint, checked against `model`'s shapes."""
  abstract = presets.abstract_params(model)
  ckptr = ocp.StandardCheckpointer()
  try:
    return ckptr.restore(os.path.abspath(os.path.join(directory, PARAMS_DIR)), abstract)
  finally:
    ckptr.close()
