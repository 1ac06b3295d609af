"""How HINet's convolutions run here: the one place that asks which platform and backend this is.

A backend is a run-time choice, never a checkpoint field: 'xla' (`hinet_jax.models` as written,
any platform and device count), 'cpu' (the C++ kernels of `hinet_jax.cpu`, one CPU device) or
'auto' ('cpu' where it runs and computes the model, else 'xla', said in one log line). Generic code
asks a `Backend` what differs by platform instead of testing for a CPU itself.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp

from hinet_jax import models

BACKENDS = ('auto', 'xla', 'cpu')


@dataclasses.dataclass(frozen=True)
class Backend:
  """What the chosen backend and this platform decide.

  Attributes:
    name: 'xla' or 'cpu' (never 'auto').
    layers: the parts the model is built with (`models.Layers`).
    calls_in_flight: calls loops keep dispatched before waiting for the oldest (CPU 1: XLA would
      run them side by side, each with its temporaries; accelerators 2, to overlap the host).
    skip_step_by_cond: skip a non-finite train step by `lax.cond` (CPU) rather than by selects.
    inference_compiler_options: compiler options of forward-only executables (`jit_inference`).
    prepare_inference: `(model, params, low_memory) -> extra variables` read at inference, once
      per set of weights (the CPU backend packs its kernels there).
  """

  name: str
  layers: models.Layers
  calls_in_flight: int
  skip_step_by_cond: bool
  inference_compiler_options: Optional[dict] = None
  prepare_inference: Optional[Callable[[Any, Any, bool], Any]] = None

  def build(self, model: models.HINet) -> models.HINet:
    """`model` with this backend's layers; raises ValueError where the CPU backend declines it."""
    if self.name == 'cpu':
      from hinet_jax.cpu import layers as cpu_layers  # pylint: disable=g-import-not-at-top

      why_not = _cpu_declines(model)
      if why_not:
        raise ValueError(f'The CPU backend does not compute this model: {why_not}.')
      return model.clone(layers=cpu_layers.layers_for(model.layers))
    return model.clone(layers=_plain_layers(model.layers))

  def jit_inference(self, fn: Callable, **jit_kwargs) -> Callable:
    """`jax.jit(fn, **jit_kwargs)` with this backend's inference compiler options; the same
    object for the same arguments, so its compiled programs are reused."""
    options = self.inference_compiler_options
    return _jit(fn, tuple(sorted(options.items())) if options else (),
                tuple(sorted(jit_kwargs.items())))

  def inference_variables(self, model: Any, params: Any, *, keep_params: bool = True,
                          low_memory: bool = False) -> dict:
    """The variables `model.apply` reads at inference: the params and what this backend prepares.

    Args:
      model: the built model.
      params: its parameters.
      keep_params: False replaces each parameter that has a prepared twin (the same path in a
        prepared collection) by its `Shape`, so only the prepared form is held.
      low_memory: prepare the smaller, slower form where there is a choice.

    Returns:
      `{'params': ..., **prepared}`; apply it through `fill_shapes` inside a jitted function.
    """
    if self.prepare_inference is None:
      return {'params': params}
    prepared = self.prepare_inference(model, params, low_memory)
    if not keep_params:
      twins = {path for extra in prepared.values()
               for path, _ in jax.tree_util.tree_flatten_with_path(extra)[0]}
      params = jax.tree_util.tree_map_with_path(
          lambda path, a: Shape(a.shape, str(a.dtype)) if path in twins else a, params)
    return {'params': params, **prepared}


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Shape:
  """A parameter held as its shape only: its prepared twin is what the layers read (the C++
  kernels ignore the raw kernel given a packed one). Static under `jax.jit`."""

  shape: tuple
  dtype: str


def fill_shapes(variables: Any) -> Any:
  """`variables` with each `Shape` as zeros (inside jit: dead code, or one kernel-sized temporary
  where a C++ call takes the raw kernel beside its packed one)."""
  return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype) if isinstance(a, Shape) else a,
                      variables, is_leaf=lambda a: isinstance(a, Shape))


@functools.lru_cache(maxsize=64)
def _jit(fn: Callable, options: tuple, jit_kwargs: tuple) -> Callable:
  return jax.jit(fn, compiler_options=dict(options) or None, **dict(jit_kwargs))


def prepare_process() -> None:
  """On CPU, glibc malloc keeps what XLA frees (`cpu.host_memory`); call before JAX runs."""
  from hinet_jax.cpu import host_memory  # pylint: disable=g-import-not-at-top

  host_memory.keep_freed_memory()


def prepare_distributed() -> None:
  """Before `jax.distributed.initialize`: CPU devices of several processes talk through gloo."""
  from hinet_jax.cpu import host_memory  # pylint: disable=g-import-not-at-top

  if host_memory.will_run_on_cpu():
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')


def _on_cpu() -> bool:
  return jax.default_backend() == 'cpu'


def _xla() -> Backend:
  on_cpu = _on_cpu()
  return Backend(name='xla', layers=models.XLA_LAYERS, calls_in_flight=1 if on_cpu else 2,
                 skip_step_by_cond=on_cpu)


def _cpu() -> Backend:
  from hinet_jax import cpu  # pylint: disable=g-import-not-at-top  (only where it runs)

  return Backend(name='cpu', layers=cpu.LAYERS, calls_in_flight=1, skip_step_by_cond=True,
                 inference_compiler_options=cpu.inference_compiler_options(),
                 prepare_inference=cpu.prepare_inference)


def cpu_backend_applies() -> tuple[bool, str]:
  """Whether the 'cpu' backend can run here, and if not, why not."""
  if not _on_cpu():
    return False, f'JAX runs on {jax.default_backend()}, not the CPU'
  if jax.device_count() != 1:
    # XLA's partitioner cannot split the kernels' custom calls (it would gather a batch-sharded
    # input onto every device), so several devices keep XLA's convolutions.
    return False, f'{jax.device_count()} devices (the C++ kernels run on one)'
  from hinet_jax.cpu import kernels  # pylint: disable=g-import-not-at-top

  if not kernels.available():
    return False, 'the C++ kernels did not build or failed their self-test (see the warning above)'
  return True, ''


def _plain_layers(layers: models.Layers) -> models.Layers:
  """`layers` with each of the CPU backend's parts swapped back for its `plain_twin` (any other
  part kept)."""
  return models.Layers(**{f.name: getattr(getattr(layers, f.name), 'plain_twin',
                                          getattr(layers, f.name))
                          for f in dataclasses.fields(layers)})


def _cpu_declines(model: models.HINet) -> Optional[str]:
  """Why the CPU backend does not compute `model` (built by any backend), or None."""
  from hinet_jax.cpu import model_check  # pylint: disable=g-import-not-at-top

  plain = model.clone(layers=_plain_layers(model.layers))
  return model_check.why_not_supported(plain)


def resolve(name: str = 'auto', model: Optional[models.HINet] = None) -> Backend:
  """The backend called `name` ('auto', 'xla' or 'cpu') on this platform.

  Args:
    name: 'auto', 'xla' or 'cpu'.
    model: the HINet to run, if known: where the CPU backend does not compute it
      (`cpu.model_check`), XLA's layers run it, with one log line.

  Raises:
    ValueError: an unknown name, or 'cpu' where it cannot run (the message says why).
  """
  backend = _resolve(name)
  if model is not None and backend.name == 'cpu':
    why_not = _cpu_declines(model)
    if why_not:
      _log_once('Backend %s: XLA\'s layers for this model, which the CPU backend does not compute '
                '(%s).', name, why_not)
      return _xla()
  return backend


@functools.lru_cache(maxsize=None)
def _log_once(message: str, *args) -> None:
  logging.warning(message, *args)


@functools.lru_cache(maxsize=None)
def _resolve(name: str) -> Backend:
  if name not in BACKENDS:
    raise ValueError(f'Unknown backend {name!r}: choose one of {", ".join(BACKENDS)} '
                     "('auto' picks 'cpu' on one CPU device, 'xla' elsewhere).")
  if name == 'xla':
    return _xla()
  applies, why_not = cpu_backend_applies()
  if name == 'cpu' and not applies:
    raise ValueError(f"backend='cpu' cannot run here: {why_not}. Use backend='auto' or 'xla'.")
  if applies:
    return _cpu()
  logging.info('Backend auto: xla (%s).', why_not)
  return _xla()


def build(model: models.HINet, backend: str = 'auto') -> models.HINet:
  """`model` with the layers of `backend` for it (see `resolve`)."""
  return resolve(backend, model).build(model)


