"""The public entry points: a model with this machine's backend, and one with its weights."""

import importlib.util
import os
from typing import Any, Optional, Tuple

from hinet_jax import backends
from hinet_jax import checkpoints
from hinet_jax import files
from hinet_jax import models
from hinet_jax.interop import hub


def create_model(preset: Optional[str] = None, *, backend: str = 'auto', **overrides) -> models.HINet:
  """A HINet (see `models.create_model`) whose convolutions run on `backend`.

  Args:
    preset: one of `models.PRESETS`, or None.
    backend: 'auto' (the C++ kernels on one CPU device, XLA's elsewhere), 'xla' or 'cpu'.
    **overrides: `HINet` fields that replace the preset's.

  Returns:
    The model.
  """
  return backends.build(models.create_model(preset, **overrides), backend)


def load_pretrained(directory: files.PathLike, which: str = 'latest', dtype: Optional[Any] = None,
                    *, backend: str = 'auto') -> Tuple[models.HINet, Any]:
  """Loads `(model, params)` from a converted checkpoint, a training workdir or the Hub layout.

  Args:
    directory: local or `gs://...`: a params-only checkpoint (convert, export or `save_params`),
      a training workdir or a Hub-layout folder (`hinet-export --format=hub`); or a Hub repo,
      `hf://org/name[@revision]` or `org/name` where no such local path exists (the hub extra).
    which: for a training workdir, 'latest', 'best' (by validation PSNR) or a step number.
    dtype: optional compute dtype override (e.g. 'bfloat16').
    backend: how the convolutions run (see `create_model`).

  Returns:
    `(model, params)`; `model.apply({'params': params}, x)` returns `(stage1, stage2)`.
  """
  if is_hub_repo(directory) or (files.is_dir(directory) and hub.is_hub_dir(directory)):
    model_cfg, params = hub.read_hub(directory)
  else:
    model_cfg, params = checkpoints.load(directory, which)
  overrides = {} if dtype is None else {'dtype': dtype}
  return backends.build(models.create_model(**{**model_cfg, **overrides}), backend), params


def is_hub_repo(source: files.PathLike) -> bool:
  """Whether `source` names a Hub repo: `hf://...`, or `org/name` that is no local path while the
  Hub client is installed (without it, a missing local folder's error is the clearer one)."""
  if str(source).startswith(hub.HF_PREFIX):
    return True
  return hub.repo_id_of(os.fspath(source)) is not None and \
      importlib.util.find_spec('huggingface_hub') is not None
