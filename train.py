"""Trains HINet: `python train.py --config=configs/sidd.py --workdir=DIR [--config.x=y ...]`.

This file is intentionally kept short: it parses flags, sets up (multi-host) JAX and calls
`hinet_jax.train.train_lib.train_and_evaluate`. Re-running the same command resumes from the workdir.

Multi-host: pass --jax_distributed (cluster auto-detection: SLURM, TPU pods, ...) or the explicit
--coordinator_address/--num_processes/--process_id (or the JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID environment variables). On CPU the processes talk over gloo.
"""

import logging as std_logging
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from hinet_jax.cpu import host_memory

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file (path[:arg]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard logs, final metrics.')
_DISTRIBUTED = flags.DEFINE_bool('jax_distributed', False,
                                 'Call jax.distributed.initialize() (multi-host runs).')
_COORDINATOR = flags.DEFINE_string('coordinator_address',
                                   os.environ.get('JAX_COORDINATOR_ADDRESS'),
                                   'host:port of process 0 (implies --jax_distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes',
                                      int(os.environ.get('JAX_NUM_PROCESSES', 0)) or None,
                                      'Number of processes (with --coordinator_address).')
_PROCESS_ID = flags.DEFINE_integer('process_id',
                                   int(os.environ['JAX_PROCESS_ID'])
                                   if 'JAX_PROCESS_ID' in os.environ else None,
                                   'This process (with --coordinator_address).')
flags.mark_flags_as_required(['config', 'workdir'])


def initialize_distributed() -> None:
  """jax.distributed.initialize when asked; gloo collectives when the devices are CPUs."""
  if not (_DISTRIBUTED.value or _COORDINATOR.value):
    return
  if host_memory.will_run_on_cpu():
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)


class _QuietOrbax(std_logging.Filter):
  """Drops orbax's INFO records; keeps its warnings and everything else."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Before JAX runs anything: XLA's threads keep the malloc arena they first allocate from.
  host_memory.keep_freed_memory()
  initialize_distributed()
  # orbax logs ~70 INFO lines per save/restore through absl (shared/API_NOTES.md, misc).
  logging.get_absl_handler().addFilter(_QuietOrbax())
  from hinet_jax.train import train_lib  # pylint: disable=g-import-not-at-top
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  overrides = config_flags.get_override_values(flags.FLAGS['config'])
  logging.info('Config overrides: %s', overrides)
  train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
