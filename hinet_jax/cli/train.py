"""Trains HINet: `python train.py --config=configs/sidd.py --workdir=DIR [--config.x=y ...]`.

The program behind the top-level `train.py` and the installed `hinet-train` command. It is
intentionally kept short: it parses flags, sets up (multi-host) JAX and calls
`hinet_jax.train.loop.train_and_evaluate`. Re-running the same command resumes from the workdir.
`--config` takes a path; `configs/NAME.py` (or just `NAME`) that is not a file where the command
runs means the config of that name shipped in `hinet_jax/configs/`, so the installed command works
from any directory.

--workdir and --config.init_from may be object storage (`gs://bucket/run`); see README "Pods and
object storage".

Multi-host: pass --jax_distributed (cluster auto-detection: SLURM, TPU pods, ...) or the explicit
--coordinator_address/--num_processes/--process_id (or the JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID environment variables). On CPU the processes talk over gloo.

A mistake in the flags, a config key, a path or the data prints one message naming the option or
file and exits with status 2; --traceback shows the Python traceback as well.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from hinet_jax import configs
from hinet_jax.cli import runner
from hinet_jax import backends

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file (path[:arg]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                                'Checkpoints, TensorBoard logs, final metrics (a folder or gs://).')
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
  backends.prepare_distributed()
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)


class _QuietOrbax(std_logging.Filter):
  """Drops orbax's INFO records; keeps its warnings and everything else."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  backends.prepare_process()  # before JAX runs anything
  initialize_distributed()
  # orbax logs ~70 INFO lines per save/restore through absl.
  logging.get_absl_handler().addFilter(_QuietOrbax())
  from hinet_jax.train import loop  # pylint: disable=g-import-not-at-top
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  logging.info('Config file: %s', config_flags.get_config_filename(flags.FLAGS['config']))
  overrides = config_flags.get_override_values(flags.FLAGS['config'])
  logging.info('Config overrides: %s', overrides)
  loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
  """`hinet-train` and `python train.py`: `--config` may name a packaged config (module doc)."""
  # config_flags reads the `--config.x=y` overrides from sys.argv itself, so rewrite it there.
  sys.argv = configs.resolve_flag(sys.argv)
  runner.run(main)


if __name__ == '__main__':
  run()
