"""How HINet's convolutions run here: the one place that asks which platform and backend this is.

A backend is a run-time choice, never a property of a checkpoint (`model_config.json` holds the
architecture only):

  * 'xla': the model as `hinet_jax.models` writes it (`lax.conv`), on any platform and any number
    of devices. What GPUs, TPUs and multi-device runs use.
  * 'cpu': the hand-written C++ kernels of `hinet_jax.cpu` (fused blocks, Winograd, kernels packed
    once per set of weights at inference), with the same parameter tree. One CPU device, float32.
  * 'auto' (the default): 'cpu' on a single CPU device where the kernels build and pass their
    self-test, else 'xla'.

Given the model, 'cpu' and 'auto' also check that the CPU backend computes it
(`cpu.model_check`): a model whose blocks were edited, or built from other parts, runs on XLA's
layers, said in one log line.

Everything else that differs by platform is a field of `Backend`, so generic code (the train loop,
inference, evaluation) asks it here instead of testing for a CPU itself.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

from absl import logging
import jax


from hinet_jax import models

BACKENDS = ('auto', 'xla', 'cpu')


@dataclasses.dataclass(frozen=True)
class Backend:
  """What the chosen backend and this platform decide.

  Attributes:
    name: 'xla' or 'cpu' (never 'auto': `resolve` decides).
    layers: the convolution layers and blocks the model is built with (`models.Layers`).
    calls_in_flight: how many calls loops keep dispatched before waiting for the oldest. One on
      CPU, where XLA runs independent executions side by side, each with its own temporaries, on
      the same cores; two on accelerators, so that the host's work overlaps the device's.
    skip_step_by_cond: whether a non-finite train step is skipped by `lax.cond` (CPU: with
      selects XLA:CPU copies every optimizer moment to update it in place) or by selects.
    inference_compiler_options: `jax.jit(compiler_options=...)` for forward-only executables.
    prepare_inference: `(model, params) -> extra variables` for `model.apply` at inference, once
      per set of weights (the CPU backend packs its kernels there; jitted, not differentiable).
  """

  name: str
  layers: models.Layers
  calls_in_flight: int
  skip_step_by_cond: bool
  inference_compiler_options: Optional[dict] = None
  prepare_inference: Optional[Callable[[Any, Any], Any]] = None

  def build(self, model: models.HINet) -> models.HINet:
    """`model` with this backend's layers (same parameters, same outputs to float rounding).

    Raises:
      ValueError: the CPU backend for a model it does not compute (`resolve` with the model
        picks XLA's layers for it instead).
    """
    if self.name == 'cpu':
      from hinet_jax.cpu import layers as cpu_layers  # pylint: disable=g-import-not-at-top

      why_not = _cpu_declines(model)
      if why_not:
        raise ValueError(f'The CPU backend does not compute this model: {why_not}.')
      return model.clone(layers=cpu_layers.layers_for(model.layers))
    return model.clone(layers=_plain_layers(model.layers))


def prepare_process() -> None:
  """Process-wide settings for the backends: on CPU, glibc malloc keeps what XLA frees for its
  next execution (`cpu.host_memory`). Entry points call it first, before JAX runs anything."""
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
  """`layers` with the CPU backend's parts swapped back; parts of a model's own (a norm) kept."""
  if not any(type(part).__module__.startswith('hinet_jax.cpu') or
             getattr(part, '__module__', '').startswith('hinet_jax.cpu')
             for part in dataclasses.astuple(layers)):
    return layers
  from hinet_jax.cpu import layers as cpu_layers  # pylint: disable=g-import-not-at-top

  return cpu_layers.plain_layers(layers)


def _cpu_declines(model: models.HINet) -> Optional[str]:
  """Why the CPU backend does not compute `model` (built by any backend), or None."""
  from hinet_jax.cpu import layers as cpu_layers  # pylint: disable=g-import-not-at-top
  from hinet_jax.cpu import model_check  # pylint: disable=g-import-not-at-top

  plain = model.clone(layers=cpu_layers.plain_layers(model.layers))
  return model_check.why_not_supported(plain)


def resolve(name: str = 'auto', model: Optional[models.HINet] = None) -> Backend:
  """The backend called `name` ('auto', 'xla' or 'cpu') on this platform, for `model` if given.

  Args:
    name: 'auto', 'xla' or 'cpu'.
    model: the HINet to run. Where 'cpu' or 'auto' would pick the CPU backend but it does not
      compute this model (`cpu.model_check`), XLA's layers run it, with one log line.

  Raises:
    ValueError: for an unknown name, or 'cpu' where it cannot run (the message says why and what
      to use instead).
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


