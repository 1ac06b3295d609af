"""hinet_jax.interop.hub: the Hub layout round-trips, loads into the official PyTorch HINet, and
is read by repo id from a local Hub cache with no network."""

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

import hinet_jax
from hinet_jax import errors
from hinet_jax import models
from hinet_jax.data import image_ops
from hinet_jax.interop import hub
from hinet_jax.interop import torch_port
import data_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(wf=8, depth=2, hin_position_left=0, hin_position_right=1)
METRICS = {'psnr': 30.5, 'psnr_official': 30.6, 'ssim': 0.9, 'ssim_official': 0.91,
           'official_peak_flips': 1, 'step': 10}


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A tiny HINet's config and random params, saved in the Hub layout."""
  model = models.create_model(**TINY)
  params = data_fixtures.random_params(model)
  config = models.model_config(model)
  card = hub.model_card(config, params, license_id='apache-2.0', origin='Trained in a test.',
                        training_config={'optim': {'learning_rate': 2e-4}}, metrics=METRICS)
  out = hub.save_pretrained(tmp_path_factory.mktemp('hub') / 'tiny', config, params, card=card)
  return config, params, out


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_round_trip_and_card(saved):
  config, params, out = saved
  assert sorted(os.listdir(out)) == sorted([hub.CONFIG_FILE, hub.WEIGHTS_FILE, hub.CARD_FILE])
  assert hub.is_hub_dir(out)
  read_config, read_params = hub.read_hub(out)
  assert models.create_model(**read_config) == models.create_model(**config)
  _assert_same(read_params, params)
  card = open(os.path.join(out, hub.CARD_FILE)).read()
  for text in ('license: apache-2.0', f'{models.count_params(params):,}', 'official_peak_flips',
               'psnr_official', '"learning_rate": 0.0002', 'Trained in a test.'):
    assert text in card


def test_weights_load_into_the_official_pytorch_hinet(saved):
  pytest.importorskip('torch')
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top
  config, params, out = saved
  net = torch_reference.HINetTorch(**TINY)
  net.load_state_dict(safetensors.torch.load_file(os.path.join(out, hub.WEIGHTS_FILE)), strict=True)
  expected = torch_port.flax_to_torch(params)
  for name, tensor in net.state_dict().items():
    np.testing.assert_array_equal(tensor.numpy(), expected[name])
  del config


def test_bfloat16_weights_are_half_the_bytes_and_load_in_both_frameworks(saved, tmp_path):
  """BF16 tensors (safetensors' numpy binding writes none; `hub` renames their uint16 bits): the
  official PyTorch HINet loads them as bfloat16, hinet-jax as float32, both the rounded weights."""
  config, params, out = saved
  card = hub.model_card(config, params, license_id='mit', origin='A test.', dtype='bfloat16')
  half = hub.save_pretrained(tmp_path / 'bf16', config, params, card=card, dtype='bfloat16')
  size = lambda folder: os.path.getsize(os.path.join(folder, hub.WEIGHTS_FILE))
  assert size(half) < 0.55 * size(out)
  with open(os.path.join(half, hub.CONFIG_FILE)) as f:
    assert json.load(f)['torch_dtype'] == 'bfloat16'
  rounded = jax.tree.map(lambda a: np.asarray(a, ml_dtypes.bfloat16).astype(np.float32), params)
  read_config, read_params = hub.read_hub(half)
  assert models.create_model(**read_config) == models.create_model(**config)
  _assert_same(read_params, rounded)
  pytest.importorskip('torch')
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top
  state = safetensors.torch.load_file(os.path.join(half, hub.WEIGHTS_FILE))
  assert {t.dtype for t in state.values()} == {torch.bfloat16}
  net = torch_reference.HINetTorch(**TINY)
  net.load_state_dict(state, strict=True)
  for name, tensor in net.state_dict().items():
    np.testing.assert_array_equal(tensor.numpy(), torch_port.flax_to_torch(rounded)[name])


COMMIT = '0123456789abcdef0123456789abcdef01234567'


def _offline_cache(out, cache):
  """`cache` as snapshot_download leaves it for acme/hinet-tiny: refs/main names the snapshot
  folder of a commit."""
  repo = cache / 'models--acme--hinet-tiny'
  shutil.copytree(out, repo / 'snapshots' / COMMIT)
  (repo / 'refs').mkdir()
  (repo / 'refs' / 'main').write_text(COMMIT)


def test_repo_id_from_the_local_cache_offline(saved, tmp_path, monkeypatch):
  constants = pytest.importorskip('huggingface_hub.constants')
  _, params, out = saved
  _offline_cache(out, tmp_path)
  commit = COMMIT
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
  monkeypatch.setattr(constants, 'HF_HUB_CACHE', os.fspath(tmp_path))
  for source in ('acme/hinet-tiny', 'hf://acme/hinet-tiny', f'hf://acme/hinet-tiny@{commit}',
                 out):  # the public loader reads repo ids and the folder alike
    model, read = hinet_jax.load_pretrained(source, backend='xla')
    assert models.model_config(model) == saved[0]
    _assert_same(read, params)
  with pytest.raises(errors.MissingPathError, match='acme/absent.*HF_HUB_OFFLINE'):
    hub.read_hub('acme/absent')


def test_mismatched_weights_are_one_error_listing_them(saved, tmp_path):
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  config, _, out = saved
  bad = tmp_path / 'bad'
  shutil.copytree(out, bad)
  tensors = st_numpy.load_file(bad / hub.WEIGHTS_FILE)
  tensors['conv_01.weigth'] = tensors.pop('conv_01.weight')
  tensors['last.bias'] = tensors['last.bias'][:2]
  st_numpy.save_file(tensors, bad / hub.WEIGHTS_FILE)
  with pytest.raises(torch_port.ConversionError,
                     match=r'(?s)model.safetensors.*missing: conv_01.weight.*unexpected: '
                     r'conv_01.weigth.*mis-shaped: last.bias'):
    hub.read_hub(bad)
  (bad / hub.CONFIG_FILE).write_text(json.dumps(dict(config, model_type='unet')))
  with pytest.raises(errors.InvalidInputError, match="config.json: model_type is 'unet'"):
    hub.read_hub(bad)


def test_eval_py_restores_from_a_repo_id(saved, tmp_path):
  """`eval.py --checkpoint=org/name` reads the Hub cache offline, as `load_pretrained` does."""
  pytest.importorskip('huggingface_hub')
  _, params, out = saved
  _offline_cache(out, tmp_path / 'cache')
  photo = tmp_path / 'photo.png'
  data_fixtures.write_rgb(str(photo), np.full((12, 20, 3), 128, np.uint8))
  env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path / 'cache'),
             JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'eval.py'), '--checkpoint=acme/hinet-tiny',
       f'--input={photo}', f'--output={tmp_path / "out"}', '--tile=0', '--backend=xla'],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  model = models.create_model(**TINY)
  want = data_fixtures.restored(model, params, np.full((1, 12, 20, 3), 128 / 255, np.float32))[0]
  got = image_ops.read_image(tmp_path / 'out' / 'photo.png').astype(int)
  want = np.round(np.clip(np.asarray(want), 0, 1) * 255).astype(int)
  assert np.abs(got - want).max() <= 1  # Another executable: rounding may flip.
