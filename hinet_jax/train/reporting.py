"""Where a run's metrics go: TensorBoard through clu, or the log alone.

clu's writers import TensorFlow (seconds of CPU); with `config.tensorboard=False`, and on every
process but the first, `LogWriter` keeps the same interface on absl's log without it.
"""

from typing import Any, Mapping

from absl import logging
import jax
import numpy as np

from hinet_jax import files


class LogWriter:
  """clu's `MetricWriter` interface, writing scalars to the log and nothing else."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    logging.info('[%d] %s', step, ', '.join(f'{k}={float(v):.6g}' for k, v in
                                            sorted(scalars.items())))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    del step, images  # Panels need TensorBoard; the final PNG is written either way.

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    del step, texts

  def write_histograms(self, step: int, arrays: Mapping[str, np.ndarray], num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams  # The config is saved with every checkpoint.

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def create_writer(workdir: files.PathLike, tensorboard: bool = True):
  """TensorBoard event files (through tf.io.gfile: local or gs://) on process 0, else the log.

  Args:
    workdir: where the event files go.
    tensorboard: `config.tensorboard`; False logs metrics only (no TensorFlow import; also for a
      storage emulator, which tf.io.gfile cannot reach).
  """
  if not tensorboard or jax.process_index() > 0:
    return LogWriter()
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  # Imports TensorFlow.
  return metric_writers.create_default_writer(str(workdir), asynchronous=True)


def eta_text(steps_left: int, steps_per_sec: float) -> str:
  """'1h02m' / '4m05s' / '12s' for the time `steps_left` take at `steps_per_sec`."""
  seconds = int(round(steps_left / max(steps_per_sec, 1e-9)))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{seconds:02d}s' if minutes else f'{seconds}s'
