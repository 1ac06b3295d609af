r"""Converts official HINet weights between PyTorch (.pth) and hinet-jax checkpoints.

PyTorch -> JAX (writes a params-only orbax checkpoint plus model_config.json):

  python -m hinet_jax.convert --torch_checkpoint=HINet-SIDD-1x.pth --output=ckpt/sidd-1x \
      [--preset=sidd-1x]

  The variant is read off the tensors (--preset, if given, must match); every tensor must be
  used once. The .pth is read with torch.load(weights_only=True): a file cannot run code.

JAX -> PyTorch (a state dict with the official names, loadable by the official code):

  python -m hinet_jax.convert --checkpoint=ckpt/sidd-1x --output=HINet-mine.pth

  --checkpoint may also be a training workdir (--which=latest|best).

Needs torch (`pip install .[convert]`). A mistake in a flag or path prints one message and exits
with status 2 (--traceback for the traceback).
"""

from absl import app
from absl import flags
from absl import logging

from hinet_jax import checkpoints
from hinet_jax import errors
from hinet_jax import files
from hinet_jax import models
from hinet_jax.interop import torch_port
from hinet_jax.models import pretrained

_TORCH_CHECKPOINT = flags.DEFINE_string(
    'torch_checkpoint', None, 'Official PyTorch checkpoint (.pth) to convert to JAX.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'hinet-jax checkpoint dir or training workdir to convert to PyTorch.')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'Output: a directory (to JAX) or a .pth file (to PyTorch).', required=True)
_PRESET = flags.DEFINE_enum(
    'preset', None, sorted(models.PRESETS), 'Expected variant; checked against the tensors.')
_PARAM_KEY = flags.DEFINE_string(
    'param_key', None, "Key holding the state dict in the .pth ('params', 'params_ema'); "
    'default: params, else params_ema, else the top level.')
_WHICH = flags.DEFINE_enum('which', 'latest', ['latest', 'best'],
                           'For a training workdir: which checkpoint to export.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing output.')


def _check_paths(source: str, source_flag: str, output: str, overwrite: bool) -> None:
  if not files.exists(source):
    raise errors.MissingPathError(f'--{source_flag}={source} does not exist.')
  if files.exists(output) and not overwrite:
    raise errors.OutputExistsError(f'--output={output} already exists; pass --overwrite to '
                                   'replace it, or choose another --output.')


def torch_to_jax(pth: str, output: str, preset, param_key, overwrite: bool) -> None:
  """Converts an official .pth to a params-only checkpoint directory at `output`."""
  _check_paths(pth, 'torch_checkpoint', output, overwrite)
  model, params = torch_port.convert_torch_checkpoint(pth, preset=preset, param_key=param_key)
  fits = torch_port.matching_presets(models.model_config(model))
  path = pretrained.save_params(output, params, models.model_config(model), overwrite=overwrite)
  logging.info('Converted %s (%s params, variant %s) -> %s', pth,
               f'{models.count_params(params):,}', fits or models.model_config(model), path)
  print(f'Wrote {path} ({models.count_params(params):,} params; matches presets: {fits}).')


def jax_to_torch(checkpoint: str, output: str, which: str, overwrite: bool) -> None:
  """Writes the params of a checkpoint (or training workdir) as an official-names .pth file."""
  _check_paths(checkpoint, 'checkpoint', output, overwrite)
  _, params = checkpoints.load(checkpoint, which)
  state_dict = torch_port.flax_to_torch(params)
  torch_port.save_torch_state_dict(state_dict, output)  # whole or not at all (files.write_bytes)
  print(f'Wrote {output} ({len(state_dict)} tensors, official names, wrapped as {{"params": ...}}).')


def main(argv):
  """Converts in the direction the flags give."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if bool(_TORCH_CHECKPOINT.value) == bool(_CHECKPOINT.value):
    raise app.UsageError('Give exactly one of --torch_checkpoint (PyTorch -> JAX) or '
                         '--checkpoint (JAX -> PyTorch).')
  if _TORCH_CHECKPOINT.value:
    torch_to_jax(_TORCH_CHECKPOINT.value, _OUTPUT.value, _PRESET.value, _PARAM_KEY.value,
                 _OVERWRITE.value)
  else:
    jax_to_torch(_CHECKPOINT.value, _OUTPUT.value, _WHICH.value, _OVERWRITE.value)
