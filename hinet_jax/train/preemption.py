"""SIGTERM (preemption, a scheduler) as a stop that every process takes at the same step."""

import signal

from absl import logging
import jax
from jax._src import distributed  # No public accessor for the preemption service.
from jax.experimental import multihost_utils
import numpy as np


def preemption_service_active() -> bool:
  """Whether jax.distributed runs its preemption service (multi-process runs it initialised)."""
  if jax.process_count() == 1:
    return False
  return getattr(distributed.global_state, 'preemption_sync_manager', None) is not None


class StopSignal:
  """Context manager that turns SIGTERM into a stop the loop polls each step.

  One process: a Python handler sets a flag (the old handler comes back on exit). Several with
  jax's preemption service: its own handler stays and its sync point picks the step. Several
  without it: the flag, agreed on at log steps (a collective).
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._service = preemption_service_active()

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning('Received signal %d: saving a checkpoint and stopping.', signum)
    self.requested = True

  def __enter__(self):
    if self._service:
      return self  # A Python handler would replace the service's.
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False

  def should_stop(self, step: int, at_log_step: bool) -> bool:
    """Whether to save and stop after `step`: the same answer on every process.

    Args:
      step: the step just dispatched (every process calls this at every step).
      at_log_step: whether `step` is a log step (without the service, processes agree there).

    Returns:
      True if a SIGTERM asks to stop at this step.
    """
    if jax.process_count() == 1:
      return self.requested
    if self._service:
      return multihost_utils.reached_preemption_sync_point(step)
    if not at_log_step:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))
