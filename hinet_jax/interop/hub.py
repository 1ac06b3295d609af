"""The Hugging Face Hub layout: `config.json`, `model.safetensors` and a model card `README.md`.

`model.safetensors` holds the weights under the official PyTorch names and layout
(megvii-model/HINet `basicsr/models/archs/hinet_arch.py`), so the same file loads into the
official HINet with `load_state_dict(safetensors.torch.load_file(...))` and into hinet-jax through
the exact `.pth` mapping (`torch_port`). `config.json` holds the `HINet` arguments.

A folder in this layout (local or gs://), a Hub repo id `org/name` or `hf://org/name[@revision]`
is read by `read_hub`; repos are fetched with `huggingface_hub.snapshot_download` (which honours
HF_HUB_OFFLINE and the local cache). safetensors and huggingface_hub are the `hub` extra.
"""

import json
import os
import re
import struct
from importlib import metadata
from typing import Any, Dict, Mapping, Optional, Tuple

import ml_dtypes
import numpy as np

from hinet_jax import errors
from hinet_jax import files
from hinet_jax import models
from hinet_jax.interop import extras
from hinet_jax.interop import torch_port

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
CARD_FILE = 'README.md'  # Written last: its presence says the folder is whole.
MODEL_TYPE = 'hinet'
HF_PREFIX = 'hf://'
WEIGHTS_LAYOUT = 'official-pytorch'
_REPO_ID = re.compile(r'[A-Za-z0-9][\w.-]*/[\w.-]+')
# What the card says of each metric `final_metrics.json` holds (`evaluation/engine.py`).
METRIC_NOTES = {
    'psnr': 'PSNR (dB), unrounded output, peak 1.0',
    'ssim': 'SSIM, unrounded output',
    'psnr_official': "PSNR (dB) as HINet's own code computes it",
    'ssim_official': "SSIM as HINet's own code computes it",
    'official_peak_flips': "images the official code scored on the 255 scale (its guessed peak)",
    'input_psnr': 'PSNR (dB) of the degraded input',
    'num_images': 'images evaluated',
}


DTYPES = ('float32', 'bfloat16')  # How `model.safetensors` may store the weights.


def hub_config(model_config: Mapping[str, Any], dtype: str = 'float32') -> Dict[str, Any]:
  """`config.json`: the `HINet` arguments plus what a Hub reader looks for first (`torch_dtype`:
  the stored weights' dtype, as transformers names it)."""
  return dict(model_type=MODEL_TYPE, architectures=['HINet'], weights_layout=WEIGHTS_LAYOUT,
              torch_dtype=dtype,
              **{k: v for k, v in model_config.items() if k not in ('dtype', 'param_dtype')})


def model_config_from(config: Mapping[str, Any], where: str) -> Dict[str, Any]:
  """The `HINet` arguments of a `config.json`, refusing one that is not a HINet's."""
  if config.get('model_type') != MODEL_TYPE:
    raise errors.InvalidInputError(
        f'{where}: model_type is {config.get("model_type")!r}, not {MODEL_TYPE!r}; this is not a '
        'HINet saved by hinet-jax (write one with hinet-export --format=hub).')
  fields = set(models.model_config(models.HINet()))
  return {k: v for k, v in config.items() if k in fields}


def _retag(data: bytes, old: str, new: str) -> Tuple[bytes, set]:
  """`data` (a safetensors file) with the header's dtype `old` renamed `new`, and the names of
  the tensors it renamed. Their bytes are untouched: BF16 and U16 are both 2-byte words."""
  (size,) = struct.unpack('<Q', data[:8])
  header = json.loads(data[8:8 + size])
  names = {k for k, v in header.items() if k != '__metadata__' and v['dtype'] == old}
  for name in names:
    header[name]['dtype'] = new
  text = json.dumps(header, separators=(',', ':')).encode()
  text += b' ' * (-len(text) % 8)  # safetensors pads its header to 8 bytes
  return struct.pack('<Q', len(text)) + text + data[8 + size:], names


def weights_bytes(params: Any, dtype: str = 'float32') -> bytes:
  """`model.safetensors`: `dtype` tensors under the official names and PyTorch layout.

  safetensors' numpy binding has no bfloat16: those tensors are written as their uint16 bits and
  the header then names them BF16, which the torch and Rust readers load as bfloat16.
  """
  numpy_st = extras.require('safetensors.numpy', 'hub', 'Writing model.safetensors')
  tensors = torch_port.flax_to_torch(params)
  if dtype == 'float32':
    return numpy_st.save(tensors, metadata={'format': 'pt'})
  if dtype != 'bfloat16':
    raise errors.InvalidInputError(f'--dtype={dtype}: the Hub layout stores one of {DTYPES}.')
  bits = {k: np.asarray(v, ml_dtypes.bfloat16).view(np.uint16) for k, v in tensors.items()}
  return _retag(numpy_st.save(bits, metadata={'format': 'pt'}), 'U16', 'BF16')[0]


def params_from_bytes(data: bytes, model_config: Mapping[str, Any], where: str) -> Any:
  """float32 Flax params of a `model.safetensors` (float32 or bfloat16); differing names or
  shapes are one error listing them."""
  numpy_st = extras.require('safetensors.numpy', 'hub', 'Reading model.safetensors')
  try:
    data, bf16 = _retag(data, 'BF16', 'U16')
    state_dict = numpy_st.load(data)
  except Exception as e:  # safetensors raises its own error type for a damaged header
    raise errors.InvalidInputError(f'{where} is not a readable safetensors file ({e}).') from e
  for name in bf16:  # exact: every bfloat16 is a float32
    state_dict[name] = state_dict[name].view(ml_dtypes.bfloat16).astype(np.float32)
  try:
    return torch_port.torch_to_flax(state_dict, models.create_model(**model_config))
  except torch_port.ConversionError as e:
    raise torch_port.ConversionError(f'{where}: {e}') from e


def model_card(model_config: Mapping[str, Any], params: Any, *, license_id: str,
               origin: str, training_config: Optional[Mapping[str, Any]] = None,
               metrics: Optional[Mapping[str, Any]] = None, dtype: str = 'float32') -> str:
  """The model card: architecture, size, origin, training config, final metrics and licence."""
  presets = torch_port.matching_presets(model_config)
  lines = ['---', f'license: {license_id}', 'library_name: hinet-jax',
           'pipeline_tag: image-to-image',
           'tags: [image-restoration, hinet, jax, flax, safetensors]', '---', '',
           f'# HINet{f" ({presets[0]})" if presets else ""}', '',
           'HINet (Chen et al., "HINet: Half Instance Normalization Network for Image '
           f'Restoration", CVPR-W 2021), saved by hinet-jax {_version()}.', '',
           '## Architecture', '', '| field | value |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in sorted(model_config.items())]
  lines += ['', f'Parameters: {models.count_params(params):,}. Presets it matches: '
            f'{", ".join(presets) or "none"}.', '', '## Weights', '',
            f'`{WEIGHTS_FILE}`: {dtype}, under the official PyTorch names and layout (megvii-model/'
            'HINet `hinet_arch.py`): `HINet(...).load_state_dict(safetensors.torch.load_file(...))`'
            ' loads it in PyTorch, `hinet_jax.load_pretrained(...)` in JAX.', '', '## Origin', '',
            origin, '', '## Training config', '']
  lines += (['```json', json.dumps(dict(training_config), indent=2, sort_keys=True), '```']
            if training_config else ['Not recorded with these weights.'])
  lines += ['', '## Final metrics', '']
  if metrics:
    lines += ['| metric | value | meaning |', '|---|---|---|']
    lines += [f'| {k} | {v:.6g} | {METRIC_NOTES.get(k, "")} |' if isinstance(v, (int, float))
              else f'| {k} | {v} | |' for k, v in sorted(metrics.items())]
  else:
    lines.append('None recorded with these weights.')
  lines += ['', '## Use', '', '```python', 'import hinet_jax',
            "model, params = hinet_jax.load_pretrained('ORG/NAME')  # or this folder's path",
            'restored = model.apply({"params": params}, images)[1]  # NHWC float32 in [0, 1]',
            '```', '', '## Licence', '', f'{license_id}, as given by the publisher.', '']
  return '\n'.join(lines)


def _version() -> str:
  try:
    return metadata.version('hinet-jax')
  except metadata.PackageNotFoundError:
    return '(not installed)'


def save_pretrained(output_dir: files.PathLike, model_config: Mapping[str, Any], params: Any, *,
                    card: str, dtype: str = 'float32', overwrite: bool = False) -> str:
  """Writes the Hub layout to `output_dir` (local or gs://), published whole.

  Args:
    output_dir: the folder; must not exist unless `overwrite`.
    model_config: the `HINet` arguments (`models.model_config`).
    params: the Flax params.
    card: the model card (`model_card`).
    dtype: how the weights are stored, 'float32' or 'bfloat16' (half the bytes; read back as
      float32).
    overwrite: replace an existing folder.

  Returns:
    The folder's path (absolute, for a local one).
  """
  output_dir = files.new_output(output_dir, overwrite)
  data = weights_bytes(params, dtype)
  with files.staged_dir(output_dir, marker=CARD_FILE) as staging:
    files.write_bytes(os.path.join(staging, WEIGHTS_FILE), data)
    files.write_text(os.path.join(staging, CONFIG_FILE),
                     json.dumps(hub_config(model_config, dtype), indent=2, sort_keys=True))
    files.write_text(os.path.join(staging, CARD_FILE), card)
  return output_dir


def is_hub_dir(path: files.PathLike) -> bool:
  """Whether `path` is a folder in the Hub layout (`config.json` and `model.safetensors`)."""
  folder = files.as_path(path)
  return files.is_file(folder / CONFIG_FILE) and files.is_file(folder / WEIGHTS_FILE)


def repo_id_of(source: str) -> Optional[Tuple[str, Optional[str]]]:
  """`(repo_id, revision)` if `source` names a Hub repo (`hf://org/name[@rev]`, or `org/name`
  that is no local path), else None."""
  source = os.fspath(source)
  explicit = source.startswith(HF_PREFIX)
  name = source[len(HF_PREFIX):] if explicit else source
  repo_id, _, revision = name.partition('@')
  if not _REPO_ID.fullmatch(repo_id) or (not explicit and os.path.exists(source)):
    return None
  return repo_id, revision or None


def download(repo_id: str, revision: Optional[str] = None) -> str:
  """The local snapshot folder of a Hub repo (the cache, or a download unless HF_HUB_OFFLINE)."""
  hub = extras.require('huggingface_hub', 'hub', f'Loading {HF_PREFIX}{repo_id}')
  try:
    return hub.snapshot_download(repo_id, revision=revision,
                                 allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE])
  except Exception as e:  # offline misses, unknown repos, auth and HTTP errors vary
    raise errors.MissingPathError(
        f'{repo_id} is no local folder, and the Hub repo {repo_id}'
        f'{f"@{revision}" if revision else ""} cannot be fetched ({type(e).__name__}: {e}). '
        'Check the path or repo id (and a token for a private repo), or that the repo is in the '
        'local cache when HF_HUB_OFFLINE=1.') from e


def read_hub(source: files.PathLike) -> Tuple[Dict[str, Any], Any]:
  """`(model_config, params)` of a Hub-layout folder, a repo id or `hf://org/name[@revision]`."""
  repo = repo_id_of(os.fspath(source))
  folder = download(*repo) if repo else os.fspath(source)
  if not is_hub_dir(folder):
    raise errors.MissingPathError(
        f'{source} holds no {CONFIG_FILE} and {WEIGHTS_FILE}: it is not a HINet in the Hub layout '
        '(hinet-export --format=hub writes one).')
  path = files.as_path(folder)
  try:
    config = json.loads(files.read_text(path / CONFIG_FILE))
  except json.JSONDecodeError as e:
    raise errors.InvalidInputError(f'{path / CONFIG_FILE} is not valid JSON ({e}).') from e
  model_config = model_config_from(config, os.fspath(path / CONFIG_FILE))
  params = params_from_bytes(files.read_bytes(path / WEIGHTS_FILE), model_config,
                             os.fspath(path / WEIGHTS_FILE))
  return model_config, params


def push_to_hub(folder: files.PathLike, repo_id: str, *, private: bool = False,
                token: Optional[str] = None) -> str:
  """Publishes a Hub-layout `folder` (creating the repo if needed); returns the commit URL."""
  if not is_hub_dir(folder):
    raise errors.MissingPathError(f'{folder} is not a Hub-layout folder; write one with '
                                  'hinet-export --format=hub first.')
  hub = extras.require('huggingface_hub', 'hub', 'Publishing to the Hub')
  api = hub.HfApi(token=token)
  api.create_repo(repo_id, private=private, exist_ok=True)
  return str(api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder),
                               commit_message='Upload HINet (hinet-jax)'))
