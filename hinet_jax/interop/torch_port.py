"""Official PyTorch HINet state dicts (`hinet_arch.py` names) <-> Flax parameters.

torch is imported only where `.pth` files are read or written. Mapping:
`down_path_1.0.conv_1.weight` -> `down_path_1_0/conv_1/kernel`; conv `(out, in, kh, kw)` ->
`(kh, kw, in, out)`; `up.weight` `(in, out, 2, 2)` -> `(2, 2, in, out)` (no flip); `norm.weight`
-> `norm/scale`.
"""

import io
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import flax
import jax
import numpy as np

from hinet_jax import errors
from hinet_jax import files
from hinet_jax import models

_LIST_MODULE = re.compile(r'^(down_path_[12]|up_path_[12]|skip_conv_[12])_(\d+)$')
_WRAPPER_KEYS = ('params', 'params_ema', 'state_dict')


class ConversionError(errors.InvalidInputError):
  """A checkpoint does not match the HINet layout it is converted to (a ValueError)."""


def _torch_module_name(flax_name: str) -> str:
  return _LIST_MODULE.sub(r'\1.\2', flax_name)


def torch_name(path: Tuple[str, ...]) -> str:
  """The official tensor name of the Flax parameter at `path`."""
  *modules, leaf = path
  leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}[leaf]
  return '.'.join([_torch_module_name(m) for m in modules] + [leaf])


def _is_transposed_conv(path: Tuple[str, ...]) -> bool:
  return len(path) >= 2 and path[-2] == 'up' and path[-1] == 'kernel'


def torch_to_flax_tensor(path: Tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """Rearranges one official tensor into the layout of the Flax parameter at `path`."""
  if path[-1] != 'kernel':
    return value
  if _is_transposed_conv(path):
    return value.transpose(2, 3, 0, 1)
  return value.transpose(2, 3, 1, 0)


def flax_to_torch_tensor(path: Tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """Inverse of `torch_to_flax_tensor`."""
  if path[-1] != 'kernel':
    return value
  if _is_transposed_conv(path):
    return value.transpose(2, 3, 0, 1)
  return value.transpose(3, 2, 0, 1)


def unwrap_state_dict(checkpoint: Mapping[str, Any],
                      param_key: Optional[str] = None) -> Dict[str, np.ndarray]:
  """{official name: float32 array} from a loaded checkpoint: raw, or under `param_key`, else
  under BasicSR's `params` before `params_ema` (as its `load_network`); `module.` dropped."""
  sd = checkpoint
  if param_key is not None:
    if param_key not in checkpoint:
      raise ConversionError(f'The checkpoint has no key {param_key!r}; its top-level keys are '
                            f'{sorted(checkpoint)[:10]}.')
    sd = checkpoint[param_key]
  else:
    for key in _WRAPPER_KEYS:
      if key in checkpoint and isinstance(checkpoint[key], Mapping):
        sd = checkpoint[key]
        break
  out = {}
  for name, value in sd.items():
    if name.startswith('module.'):
      name = name[len('module.'):]
    if hasattr(value, 'detach'):
      value = value.detach().cpu().float().numpy()
    out[name] = np.asarray(value, np.float32)
  return out


def infer_model_config(state_dict: Mapping[str, np.ndarray]) -> Dict[str, Any]:
  """The variant (width, depth, HIN levels) read off an official state dict's tensors."""
  if 'conv_01.weight' not in state_dict:
    raise ConversionError('Not a HINet state dict: there is no conv_01.weight (top-level keys: '
                          f'{sorted(state_dict)[:8]}...). Use --param_key if the weights are '
                          'wrapped under another key.')
  wf, in_chn = state_dict['conv_01.weight'].shape[:2]
  levels = {int(m.group(1)) for k in state_dict
            if (m := re.match(r'down_path_1\.(\d+)\.conv_1\.weight$', k))}
  depth = len(levels)
  hin = sorted(int(m.group(1)) for k in state_dict
               if (m := re.match(r'down_path_1\.(\d+)\.norm\.weight$', k)))
  if not hin:
    raise ConversionError('The checkpoint has no half-instance-norm tensors '
                          '(down_path_1.*.norm.weight); HINet needs at least one level with HIN.')
  if hin != list(range(hin[0], hin[-1] + 1)):
    raise ConversionError(f'HIN levels {hin} are not contiguous; HINet has HIN on a range of '
                          'levels [hin_position_left, hin_position_right].')
  return dict(wf=int(wf), depth=depth, in_chn=int(in_chn), hin_position_left=hin[0],
              hin_position_right=hin[-1])


def matching_presets(config: Mapping[str, Any]) -> list:
  """Names of the presets whose constructor matches `config` on every field they set."""
  return sorted(name for name, preset in models.PRESETS.items()
          if all(config.get(k) == v for k, v in preset.items())
          and config.get('depth', 5) == 5 and config.get('in_chn', 3) == 3)


def check_preset(config: Mapping[str, Any], preset: str) -> None:
  """Raises a ConversionError naming the fitting preset if `config` isn't the `preset` variant."""
  if preset not in models.PRESETS:
    raise ConversionError(f'Unknown preset {preset!r}; choose one of {sorted(models.PRESETS)}.')
  want = models.PRESETS[preset]
  diffs = {k: (v, config.get(k)) for k, v in want.items() if config.get(k) != v}
  if not diffs:
    return
  fits = matching_presets(config)
  hint = (f"It fits preset(s) {fits}: pass --preset={fits[0]} or omit --preset."
          if fits else 'No published preset fits it; omit --preset to convert it as it is.')
  details = ', '.join(f'{k}: preset {a}, checkpoint {b}' for k, (a, b) in diffs.items())
  raise ConversionError(f'The checkpoint is not the {preset!r} variant ({details}). {hint}')


def torch_to_flax(state_dict: Mapping[str, np.ndarray], model: models.HINet) -> Any:
  """`model`'s params from an official state dict, strictly: every tensor used once, shapes as
  expected, else a ConversionError listing what is missing, unexpected or mis-shaped."""
  target = flax.traverse_util.flatten_dict(flax.core.unfreeze(models.abstract_params(model)))
  flat, missing, misshaped, used = {}, [], [], set()
  for path, spec in target.items():
    name = torch_name(path)
    if name not in state_dict:
      missing.append(name)
      continue
    used.add(name)
    value = torch_to_flax_tensor(path, np.asarray(state_dict[name], np.float32))
    if value.shape != tuple(spec.shape):
      expected = flax_to_torch_tensor(path, np.zeros(spec.shape, np.int8)).shape
      misshaped.append(f'{name}: checkpoint {tuple(state_dict[name].shape)}, expected {expected}')
      continue
    flat[path] = value
  unexpected = sorted(set(state_dict) - used)
  if missing or unexpected or misshaped:
    lines = [f'The checkpoint does not match HINet({models.model_config(model)}):']
    for title, names in (('missing', missing), ('unexpected', unexpected),
                         ('mis-shaped', misshaped)):
      if names:
        lines.append(f'  {len(names)} {title}: ' + ', '.join(names[:12]) +
                     (' ...' if len(names) > 12 else ''))
    try:
      fits = matching_presets(infer_model_config(state_dict))
      if fits:
        lines.append(f'  The checkpoint fits preset(s) {fits}.')
    except ConversionError:
      pass
    raise ConversionError('\n'.join(lines))
  return flax.traverse_util.unflatten_dict(flat)


def flax_to_torch(params: Any) -> Dict[str, np.ndarray]:
  """Flax params -> {official name: numpy array} in PyTorch layout (exact inverse)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  return {torch_name(path): np.ascontiguousarray(flax_to_torch_tensor(path, np.asarray(v)))
          for path, v in flat.items()}


def load_torch_checkpoint(path: str) -> Mapping[str, Any]:
  """Reads a `.pth` file safely: `weights_only=True`, so no pickled code can run."""
  import torch  # pylint: disable=g-import-not-at-top  # conversion extra only

  if not files.is_file(path):
    raise errors.MissingPathError(f'No such checkpoint file: {path}')
  data = io.BytesIO(files.read_bytes(path))
  try:
    return torch.load(data, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises several types for corrupt or unsafe files
    raise ConversionError(
        f'Could not read {path} as a PyTorch checkpoint with weights_only=True ({e}). Only plain '
        'tensor state dicts are accepted; files that need arbitrary pickled code are refused.'
    ) from e


def save_torch_state_dict(state_dict: Mapping[str, np.ndarray], path: str,
                          wrap_params: bool = True) -> None:
  """Writes a `.pth` the official code loads (`{'params': ...}`), whole or not at all."""
  import torch  # pylint: disable=g-import-not-at-top

  tensors = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state_dict.items()}
  buffer = io.BytesIO()
  torch.save({'params': tensors} if wrap_params else tensors, buffer)
  files.write_bytes(path, buffer.getvalue())


def convert_torch_checkpoint(path: str, preset: Optional[str] = None,
                             param_key: Optional[str] = None) -> Tuple[models.HINet, Any]:
  """`(model, params)` of an official `.pth`; the variant read off the tensors must fit `preset`."""
  state_dict = unwrap_state_dict(load_torch_checkpoint(path), param_key)
  config = infer_model_config(state_dict)
  if preset is not None:
    check_preset(config, preset)
  model = models.create_model(**config)
  params = torch_to_flax(state_dict, model)
  return model, jax.tree.map(np.asarray, params)
