"""Weight conversion: strict errors, variant inference, exact round trip, the CLI end to end."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

import hinet_jax  # pylint: disable=g-import-not-at-top
from hinet_jax import errors
from hinet_jax import models
from hinet_jax.interop import torch_port
import torch_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(wf=8, depth=3, hin_position_left=0, hin_position_right=2)


@pytest.fixture(scope='module')
def tiny_state_dict():
  _, sd = torch_reference.random_state_dict(seed=0, **TINY)
  return torch_port.unwrap_state_dict(sd)


def test_unwrap_accepts_basicsr_wrappers_and_module_prefix(tiny_state_dict):
  prefixed = {'module.' + k: torch.from_numpy(v) for k, v in tiny_state_dict.items()}
  for wrapped in ({'params': prefixed}, {'params_ema': prefixed}, prefixed):
    got = torch_port.unwrap_state_dict(wrapped)
    assert sorted(got) == sorted(tiny_state_dict)
  both = {'params': prefixed, 'params_ema': {k: v * 0 for k, v in prefixed.items()}}
  assert not np.all(torch_port.unwrap_state_dict(both)['conv_01.weight'] == 0)
  assert np.all(torch_port.unwrap_state_dict(both, 'params_ema')['conv_01.weight'] == 0)
  with pytest.raises(torch_port.ConversionError, match="no key 'ema'"):
    torch_port.unwrap_state_dict(both, 'ema')


def test_infer_model_config(tiny_state_dict):
  assert torch_port.infer_model_config(tiny_state_dict) == dict(wf=8, depth=3, in_chn=3,
                                                                hin_position_left=0,
                                                                hin_position_right=2)
  with pytest.raises(torch_port.ConversionError, match='Not a HINet'):
    torch_port.infer_model_config({'foo.weight': np.zeros(3)})


def test_missing_unexpected_and_misshaped_tensors_are_listed(tiny_state_dict):
  model = models.HINet(**TINY)
  broken = dict(tiny_state_dict)
  del broken['sam12.conv1.bias']
  broken['extra.weight'] = np.zeros(3, np.float32)
  broken['last.weight'] = np.zeros((3, 8, 5, 5), np.float32)
  with pytest.raises(torch_port.ConversionError) as e:
    torch_port.torch_to_flax(broken, model)
  msg = str(e.value)
  assert '1 missing: sam12.conv1.bias' in msg
  assert '1 unexpected: extra.weight' in msg
  assert 'last.weight: checkpoint (3, 8, 5, 5), expected (3, 8, 3, 3)' in msg


def test_hin_level_mismatch_names_the_fitting_preset():
  gopro_like = dict(wf=64, depth=5, in_chn=3, hin_position_left=3, hin_position_right=4)
  with pytest.raises(torch_port.ConversionError, match=r"fits preset\(s\) \['gopro', 'reds'\]"):
    torch_port.check_preset(gopro_like, 'sidd-1x')
  torch_port.check_preset(gopro_like, 'reds')
  # Converting HIN 0-4 weights into a HIN 3-4 model fails strictly, and says which preset fits.
  sd = {k: np.zeros(v.shape, np.float32) for k, v in _layout_shapes('sidd-1x').items()}
  with pytest.raises(torch_port.ConversionError, match=r"(?s)unexpected: down_path_1.0.norm.bias.*"
                     r"fits preset\(s\) \['rain13k', 'sidd-1x'\]"):
    torch_port.torch_to_flax(sd, models.create_model('gopro'))


def _layout_shapes(preset):
  model = models.create_model(preset)
  return torch_port.flax_to_torch(jax.tree.map(lambda s: np.zeros(s.shape, np.int8),
                                               models.abstract_params(model)))


def test_round_trip_is_exact(tiny_state_dict):
  params = torch_port.torch_to_flax(tiny_state_dict, models.HINet(**TINY))
  back = torch_port.flax_to_torch(params)
  assert sorted(back) == sorted(tiny_state_dict)
  for name, value in tiny_state_dict.items():
    np.testing.assert_array_equal(back[name], value)


def test_unsafe_pickle_is_refused(tmp_path):
  path = tmp_path / 'evil.pth'
  torch.save({'params': {'x': torch.zeros(1)}, 'hook': os.getcwd}, path)  # a callable needs pickle
  with pytest.raises(torch_port.ConversionError, match='weights_only=True'):
    torch_port.load_torch_checkpoint(str(path))


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'hinet_jax.convert', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_cli_converts_both_ways_and_reproduces_torch(tmp_path):
  _, sd = torch_reference.random_state_dict(seed=5, **models.PRESETS['sidd-0.5x'])
  pth = tmp_path / 'HINet-SIDD-0.5x.pth'
  torch.save({'params': sd}, pth)
  out = tmp_path / 'ckpt'

  # The CLI converts through this before it writes anything (its one-line rendering of errors:
  # test_cli_errors.py); the CLI's own flags would clash with eval.py's in this process.
  with pytest.raises(errors.UserError, match=r"fits preset\(s\) \['sidd-0.5x'\]"):
    torch_port.convert_torch_checkpoint(str(pth), preset='gopro')

  ok = _run(f'--torch_checkpoint={pth}', f'--output={out}', '--preset=sidd-0.5x')
  assert ok.returncode == 0, ok.stderr
  # An existing output is refused: tests/test_cli_errors.py (output_exists).

  model, params = hinet_jax.load_pretrained(str(out))
  assert model.wf == 32 and hinet_jax.count_params(params) == 22_176_518
  # The weights, exactly as mapped in-process: that mapping reproduces torch's outputs
  # (test_torch_parity.py), so the CLI's file does.
  want = torch_port.torch_to_flax({k: v.numpy() for k, v in sd.items()}, model)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), want)

  back = tmp_path / 'back.pth'
  rev = _run(f'--checkpoint={out}', f'--output={back}')
  assert rev.returncode == 0, rev.stderr
  loaded = torch.load(back, weights_only=True)['params']
  assert sorted(loaded) == sorted(sd)
  for k in sd:
    assert torch.equal(loaded[k], sd[k]), k


def test_cli_help_explains_itself():
  res = _run('--help')  # absl exits 1 after printing help
  assert '--torch_checkpoint' in res.stdout and 'weights_only' in res.stdout


def test_import_needs_no_optional_dependency():
  """`import hinet_jax` (and the converter's numpy half) loads none of the extras' packages."""
  code = ('import sys, hinet_jax, hinet_jax.models, hinet_jax.interop.torch_port, '
          'hinet_jax.models.pretrained; '
          'bad = [m for m in ("torch", "tensorflow", "onnx", "onnxruntime", "huggingface_hub", '
          '"safetensors", "gradio") if m in sys.modules]; '
          'assert not bad, bad')
  res = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr
