"""Model structure: parameter counts, shapes, half instance norm, any input size, dtypes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hinet_jax
from hinet_jax import models
import data_fixtures

# Tensor names and shapes of the published checkpoints (the file's "about" says where from).
LAYOUT = os.path.join(os.path.dirname(__file__), 'data', 'official_checkpoint_layout.json')

TINY = dict(wf=8, depth=3)


@pytest.mark.parametrize('preset,expected', [
    ('sidd-1x', 88_669_702), ('sidd-0.5x', 22_176_518), ('gopro', 88_668_806),
    ('reds', 88_668_806), ('rain13k', 88_669_702)])
def test_param_counts_match_published(preset, expected):
  assert models.count_params(models.abstract_params(models.create_model(preset))) == expected


def test_param_names_and_shapes_match_official_layout():
  """Every official tensor maps to one Flax param of the right shape (and nothing else exists)."""
  from hinet_jax.interop import torch_port  # numpy-only mapping; no torch needed
  with open(LAYOUT) as f:
    layout = json.load(f)['checkpoints']
  for name, entry in layout.items():
    model = models.create_model(**entry['constructor'])
    flat = jax.tree_util.tree_flatten_with_path(models.abstract_params(model))[0]
    ours = {}
    for path, leaf in flat:
      keys = tuple(k.key for k in path)
      ours[torch_port.torch_name(keys)] = torch_port.flax_to_torch_tensor(
          keys, np.zeros(leaf.shape, np.int8)).shape
    official = {k: tuple(v) for k, v in entry['state_dict'].items()}
    assert ours == official, name
    assert sum(int(np.prod(s)) for s in ours.values()) == entry['num_params']


def test_outputs_are_two_stages_at_input_size_for_odd_sizes():
  model = models.HINet(**TINY)
  params = models.init_params(model, 0)
  apply = jax.jit(model.apply)
  for h, w in [(13, 21), (4, 4), (1, 7)]:
    x = jax.random.uniform(jax.random.key(1), (2, h, w, 3))
    s1, s2 = apply({'params': params}, x)
    assert s1.shape == s2.shape == x.shape
    assert s1.dtype == s2.dtype == jnp.float32
    assert np.isfinite(np.asarray(s2)).all()


def test_padding_only_extends_the_image():
  """On a size that needs no padding, the padded path is the identity; on odd sizes the crop of
  the output equals the output of the padded input, cropped."""
  model = models.HINet(**TINY)
  params = models.init_params(model, 0)
  x = jax.random.uniform(jax.random.key(2), (1, 10, 12, 3))
  padded = models.pad_to_multiple(x, 4)
  assert padded.shape == (1, 12, 12, 3)
  np.testing.assert_array_equal(padded[:, :10, :12], x)
  np.testing.assert_array_equal(padded[:, 10], x[:, 8])  # reflection, not zeros
  out_odd = data_fixtures.restored(model, params, x)
  out_pad = data_fixtures.restored(model, params, padded)[:, :10, :12]
  np.testing.assert_allclose(out_odd, out_pad, atol=1e-6)


def test_half_instance_norm_touches_only_first_half():
  norm = models.HalfInstanceNorm()
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 8)) * 3 + 1
  variables = norm.init(jax.random.key(1), x)
  assert variables['params']['scale'].shape == (4,)  # as the official checkpoints' norm weights
  out = norm.apply(variables, x)
  np.testing.assert_array_equal(out[..., 4:], x[..., 4:])
  first = np.asarray(out[..., :4])
  np.testing.assert_allclose(first.mean(axis=(1, 2)), 0, atol=1e-5)
  # Biased variance with eps 1e-5, as torch.nn.InstanceNorm2d.
  xs = np.asarray(x[..., :4], np.float64)
  ref = (xs - xs.mean((1, 2), keepdims=True)) / np.sqrt(xs.var((1, 2), keepdims=True) + 1e-5)
  np.testing.assert_allclose(first, ref, atol=1e-5)


def test_hin_levels_follow_positions():
  params = models.abstract_params(models.HINet(wf=8, depth=5, hin_position_left=3,
                                               hin_position_right=4))
  for stage in (1, 2):
    with_norm = [i for i in range(5) if 'norm' in params[f'down_path_{stage}_{i}']]
    assert with_norm == [3, 4]
  assert 'csff_enc' in params['down_path_2_0'] and 'csff_enc' not in params['down_path_2_4']
  assert 'csff_enc' not in params['down_path_1_0']


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = models.HINet(**TINY, dtype=jnp.bfloat16)
  params = models.init_params(model, 0)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  x = jax.random.uniform(jax.random.key(1), (1, 16, 16, 3))
  s2 = data_fixtures.restored(model, params, x)
  ref = data_fixtures.restored(models.HINet(**TINY), params, x)
  assert s2.dtype == jnp.float32
  # bf16 has ~3 significant digits: close to the float32 result, but not equal to it.
  assert 0 < float(jnp.max(jnp.abs(s2 - ref))) < 0.1


def test_create_model_presets_and_errors():
  assert models.create_model('gopro').hin_position_left == 3
  assert models.create_model('sidd-0.5x', dtype='bfloat16').dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='Unknown preset'):
    models.create_model('sidd-2x')
  with pytest.raises(ValueError, match='NHWC'):
    models.HINet(**TINY).init(jax.random.key(0), jnp.zeros((1, 3, 16, 16)))


def test_forward_macs_from_xla_cost_analysis():
  tiny = models.forward_macs(models.HINet(**TINY), 32, 32)
  assert tiny > 0
  # Doubling both sides quadruples the work of a fully convolutional net.
  assert models.forward_macs(models.HINet(**TINY), 64, 64) == pytest.approx(4 * tiny, rel=0.05)


def test_torch_default_init_distributions():
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with PyTorch's fan-in (a transposed conv's from its
  outputs); the same seed gives the same parameters."""
  model = models.HINet(**TINY)
  params = models.init_params(model, 0)
  bound = lambda fan_in: fan_in**-0.5
  checks = [(params['conv_01']['kernel'], bound(3 * 9)), (params['conv_01']['bias'], bound(3 * 9)),
            (params['up_path_1_0']['up']['kernel'], bound(16 * 4)),
            (params['down_path_1_2']['conv_1']['kernel'], bound(16 * 9))]
  for value, b in checks:
    value = np.asarray(value)
    assert value.max() <= b and value.min() >= -b
    if value.size >= 100:  # spread over the whole interval
      assert value.max() > 0.8 * b and value.min() < -0.8 * b
  again = models.init_params(model, 0)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(params['conv_01']['kernel'], models.init_params(model, 1)['conv_01']['kernel'])


def test_model_config_is_architecture_only_and_old_configs_load(tmp_path):
  """`model_config.json` holds the architecture; one written by earlier versions, with a
  `conv_impl`, still loads."""
  model = models.HINet(**TINY)
  config = models.model_config(model)
  assert 'conv_impl' not in config and 'layers' not in config
  params = models.init_params(model, 0)
  hinet_jax.save_params(str(tmp_path / 'old'), params, {**config, 'conv_impl': 'native'})
  loaded, loaded_params = hinet_jax.load_pretrained(str(tmp_path / 'old'), backend='xla')
  assert models.model_config(loaded) == config
  x = jax.random.uniform(jax.random.key(1), (1, 8, 8, 3))
  np.testing.assert_array_equal(data_fixtures.restored(model, params, x),
                                data_fixtures.restored(loaded, loaded_params, x))
