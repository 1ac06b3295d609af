"""The published HINet variants, building a model from a preset or a stored config, and sizes."""

from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from hinet_jax.models import host_random
from hinet_jax.models.hinet import HINet, XLA_LAYERS

# `HINet(**PRESETS[name])` is the network the official checkpoint of that name was trained as.
PRESETS = {
    'sidd-1x': dict(wf=64, hin_position_left=0, hin_position_right=4),
    'sidd-0.5x': dict(wf=32, hin_position_left=0, hin_position_right=4),
    'gopro': dict(wf=64, hin_position_left=3, hin_position_right=4),
    'reds': dict(wf=64, hin_position_left=3, hin_position_right=4),
    'rain13k': dict(wf=64, hin_position_left=0, hin_position_right=4),
}

# The official checkpoint file each preset corresponds to.
PRESET_CHECKPOINTS = {
    'sidd-1x': 'HINet-SIDD-1x.pth',
    'sidd-0.5x': 'HINet-SIDD-0.5x.pth',
    'gopro': 'HINet-GoPro.pth',
    'reds': 'HINet-REDS.pth',
    'rain13k': 'HINet-Rain13k.pth',
}

# Keys of older configs that are no longer architecture (now a run-time choice: `backends`).
LEGACY_KEYS = ('conv_impl',)


def create_model(preset: Optional[str] = None, **overrides) -> HINet:
  """A HINet (XLA's layers) from one of `PRESETS` and/or `HINet` fields (`LEGACY_KEYS` ignored)."""
  kwargs = {}
  if preset is not None:
    if preset not in PRESETS:
      raise ValueError(f'Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.')
    kwargs.update(PRESETS[preset])
  for key in LEGACY_KEYS:
    if overrides.pop(key, None) is not None:
      logging.info('Ignoring %r from an older model config (it is a run-time choice now).', key)
  kwargs.update(overrides)
  for key in ('dtype', 'param_dtype'):
    if isinstance(kwargs.get(key), str):
      kwargs[key] = jnp.dtype(kwargs[key])
  return HINet(**kwargs)


def model_config(model: HINet) -> dict:
  """`create_model`'s JSON-able keyword arguments for `model`: architecture only, no `layers`."""
  return dict(wf=model.wf, depth=model.depth, relu_slope=model.relu_slope,
              hin_position_left=model.hin_position_left,
              hin_position_right=model.hin_position_right, in_chn=model.in_chn,
              dtype=jnp.dtype(model.dtype).name, param_dtype=jnp.dtype(model.param_dtype).name)


def _init_input(model: HINet, image_size: int = 0) -> jax.ShapeDtypeStruct:
  side = max(image_size, model.size_multiple)
  return jax.ShapeDtypeStruct((1, side, side, model.in_chn), jnp.float32)


def init_params(model: HINet, rng: Any) -> Any:
  """`model`'s parameters, initialised on the host CPU from a key or an integer seed (drawn by
  `host_random`: the same on every host and platform)."""
  if isinstance(rng, (int, np.integer)):
    rng = host_random.key(int(rng))
  x = _init_input(model)
  cpu = jax.local_devices(backend='cpu')[0]
  with jax.default_device(cpu):
    init = jax.jit(lambda rng: model.init(rng, jnp.zeros(x.shape, x.dtype))['params'])
    return init(jax.device_put(rng, cpu))


def abstract_params(model: HINet) -> Any:
  """Shapes and dtypes of `model`'s parameters, without computing them."""
  return jax.eval_shape(model.init, jax.random.key(0), _init_input(model))['params']


def count_params(params: Any) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def forward_macs(model: HINet, height: int = 256, width: int = 256, batch: int = 1) -> float:
  """Forward multiply-accumulates on a `batch x height x width` input: XLA's cost analysis with
  XLA's layers (flops / 2), padding included, taps on zero padding skipped."""
  model = model.clone(layers=XLA_LAYERS)
  params = abstract_params(model)
  x = jax.ShapeDtypeStruct((batch, height, width, model.in_chn), jnp.float32)
  lowered = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(params, x)
  cost = lowered.compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops']) / 2.0
