"""Config conflicts found before anything is built; each message names the override that fixes it."""

import jax
import ml_collections

from hinet_jax import backends
from hinet_jax import models
from hinet_jax.train import losses
from hinet_jax.train import step as step_lib

POSITIVE_STEPS = ('num_train_steps', 'log_every_steps', 'eval_every_steps',
                  'checkpoint_every_steps')


def check_positive_steps(config: ml_collections.ConfigDict) -> None:
  """The step counts and intervals are positive."""
  for name in POSITIVE_STEPS:
    if config[name] <= 0:
      raise ValueError(f'config.{name} must be positive, got {config[name]}: pass '
                       f'--config.{name}=N with N >= 1.')


def check_crop_size(config: ml_collections.ConfigDict) -> None:
  """The training crop halves `depth - 1` times without a remainder."""
  multiple = models.size_multiple(config.model.depth)
  if config.data.crop_size % multiple:
    fix = -(-config.data.crop_size // multiple) * multiple
    raise ValueError(f'config.data.crop_size={config.data.crop_size} must be a multiple of '
                     f'2^(depth-1) = {multiple}: pass --config.data.crop_size={fix}.')


def check_data_paths(config: ml_collections.ConfigDict) -> None:
  """Every field of the train and validation source specs is set."""
  for split in ('train', 'val'):
    for key, value in config.data[split].items():
      if value is None:
        # A config that links `data.<split>_dir` to the root names the short flag.
        flag = (f'data.{split}_dir' if key == 'root' and f'{split}_dir' in config.data
                else f'data.{split}.{key}')
        raise ValueError(f'config.data.{split}.{key} is not set: pass --config.{flag}=...')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the option and its fix, on settings that would break later.

  Args:
    config: the full training config.
  """
  check_positive_steps(config)
  if config.backend not in backends.BACKENDS:
    raise ValueError(f'config.backend={config.backend!r}: choose one of '
                     f'{", ".join(backends.BACKENDS)} (e.g. --config.backend=auto).')
  check_crop_size(config)
  check_data_paths(config)
  losses.get_loss_fn(config.loss.name)
  step_lib.create_learning_rate_fn(config)
  step_lib.check_grad_accum_steps(config.batch_size, jax.device_count(), config.grad_accum_steps)
