"""Converted weights reproduce the PyTorch reference (tests/torch_reference.py), per preset."""

import jax
import numpy as np
import pytest
import torch  # the `test` extra installs it: parity is a guarantee, never skipped

from hinet_jax import models
from hinet_jax.interop import torch_port
import torch_reference


def rel_l2(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def torch_outputs(net, x_nhwc):
  with torch.no_grad():
    outs = net(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)))
  return [o.numpy().transpose(0, 2, 3, 1) for o in outs]


def _one_preset_per_architecture():
  """sidd-1x and rain13k share an architecture, as do gopro and reds: one of each is run."""
  first = {}
  for name in sorted(models.PRESETS):
    first.setdefault(tuple(sorted(models.PRESETS[name].items())), name)
  return sorted(first.values())


@pytest.mark.parametrize('preset', _one_preset_per_architecture())
def test_full_width_preset_matches_torch(preset):
  kwargs = models.PRESETS[preset]
  net, sd = torch_reference.random_state_dict(seed=1, **kwargs)
  state_dict = torch_port.unwrap_state_dict({'params': sd})
  config = torch_port.infer_model_config(state_dict)
  torch_port.check_preset(config, preset)
  model = models.create_model(preset)
  params = torch_port.torch_to_flax(state_dict, model)
  x = np.random.RandomState(0).rand(2, 32, 48, 3).astype(np.float32)
  ours = jax.jit(model.apply)({'params': params}, x)
  for got, want in zip(ours, torch_outputs(net, x)):
    assert rel_l2(np.asarray(got), want) < 1e-5


@pytest.mark.parametrize('kwargs', [dict(wf=8, depth=3, hin_position_left=0, hin_position_right=2),
                                    dict(wf=16, depth=4, hin_position_left=1, hin_position_right=2)])
def test_other_widths_and_depths_match_torch(kwargs):
  net, sd = torch_reference.random_state_dict(seed=2, **kwargs)
  model = models.HINet(**kwargs)
  params = torch_port.torch_to_flax(torch_port.unwrap_state_dict(sd), model)
  x = np.random.RandomState(1).rand(1, 64, 80, 3).astype(np.float32)
  ours = jax.jit(model.apply)({'params': params}, x)
  for got, want in zip(ours, torch_outputs(net, x)):
    assert rel_l2(np.asarray(got), want) < 1e-5


def test_flax_to_torch_weights_load_into_torch_and_agree():
  """Params initialised in JAX, exported with official names, run the same in PyTorch."""
  model = models.HINet(wf=8, depth=3, hin_position_left=0, hin_position_right=2)
  params = models.init_params(model, 3)
  net = torch_reference.HINetTorch(wf=8, depth=3, hin_position_left=0, hin_position_right=2)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in torch_port.flax_to_torch(params).items()},
                      strict=True)
  net.eval()
  x = np.random.RandomState(2).rand(1, 32, 32, 3).astype(np.float32)
  ours = jax.jit(model.apply)({'params': params}, x)
  for got, want in zip(ours, torch_outputs(net, x)):
    assert rel_l2(np.asarray(got), want) < 1e-5
