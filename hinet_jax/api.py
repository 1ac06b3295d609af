"""The public entry points that join the parts: a model with this machine's backend, and a model
with its weights from any checkpoint this project writes."""

from typing import Any, Optional, Tuple

from hinet_jax import backends
from hinet_jax import errors
from hinet_jax import files
from hinet_jax import models
from hinet_jax.models import pretrained


def create_model(preset: Optional[str] = None, *, backend: str = 'auto', **overrides) -> models.HINet:
  """A HINet (see `models.create_model`) whose convolutions run on `backend`.

  Args:
    preset: one of `models.PRESETS`, or None.
    backend: 'auto' (the C++ kernels on one CPU device, XLA's elsewhere), 'xla' or 'cpu'.
    **overrides: `HINet` fields that replace the preset's.
  """
  return backends.build(models.create_model(preset, **overrides), backend)


def load_pretrained(directory: files.PathLike, which: str = 'latest', dtype: Optional[Any] = None,
                    *, backend: str = 'auto') -> Tuple[models.HINet, Any]:
  """Loads `(model, params)` from a converted checkpoint or a training workdir.

  Args:
    directory: local or `gs://...`: a params-only checkpoint (from `python -m hinet_jax.convert`,
      export or `save_params`), or a training workdir (its latest or best checkpoint).
    which: for a training workdir, 'latest', 'best' (by validation PSNR) or a step number.
    dtype: optional compute dtype override (e.g. 'bfloat16').
    backend: how the convolutions run (see `create_model`).

  Returns:
    `(model, params)`; `model.apply({'params': params}, x)` returns `(stage1, stage2)`.
  """
  if not files.is_dir(directory):
    raise errors.MissingPathError(
        f'No checkpoint directory at {directory}: check the path (for gs://, the bucket and '
        'prefix), or convert official weights there with `python -m hinet_jax.convert`.')
  overrides = {} if dtype is None else {'dtype': dtype}
  if pretrained.is_params_checkpoint(directory):
    model = models.create_model(**{**pretrained.read_model_config(directory), **overrides})
    params = pretrained.load_params(directory, model)
  elif files.is_file(files.as_path(directory) / pretrained.MODEL_CONFIG_FILE):
    # A training workdir keeps model_config.json beside its orbax checkpoints.
    from hinet_jax.train import checkpointing  # pylint: disable=g-import-not-at-top  # training deps

    config, params = checkpointing.load_params_from_workdir(directory, which=which)
    model = models.create_model(**{**config, **overrides})
  else:
    raise errors.MissingPathError(
        f'{directory} is neither a complete converted checkpoint (it needs '
        f'{pretrained.MODEL_CONFIG_FILE} and {pretrained.PARAMS_DIR}/) nor a training workdir with '
        'checkpoints. Convert official weights with '
        '`python -m hinet_jax.convert --torch_checkpoint=F.pth --output=DIR`.')
  return backends.build(model, backend), params
