"""Data-parallel sharding: one mesh axis 'data' over every device of every host.

Batches are split over 'data'; parameters and optimizer state are replicated. The jitted train step
takes these shardings explicitly (`hinet_jax.train.step`).
"""

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def create_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh named 'data' over `devices` (default: all devices of all processes).

  Args:
    devices: the devices to use, e.g. `jax.devices()[:1]` in tests.

  Returns:
    The mesh.
  """
  devices = jax.devices() if devices is None else list(devices)
  # A plain Mesh has Auto axes (classic GSPMD propagation), which is all data parallelism needs.
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device (parameters, optimizer state, metrics)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def per_process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Checks that the global batch divides over the devices and returns this host's share.

  Args:
    global_batch_size: `config.batch_size`.
    mesh: the data mesh.

  Returns:
    Rows of each global batch that this process loads.

  Raises:
    ValueError: the batch does not split evenly over devices.
  """
  num_devices = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % num_devices:
    raise ValueError(
        f'config.batch_size={global_batch_size} (the global batch) must be a positive multiple of '
        f'the number of devices ({num_devices}); e.g. --config.batch_size='
        f'{max(1, round(global_batch_size / num_devices)) * num_devices}.')
  return global_batch_size // jax.process_count()


def put_batch(batch: Any, sharding: NamedSharding) -> Any:
  """Assembles a global jax.Array per leaf from this process's rows of the batch.

  Works on one and on many processes (`jax.device_put` of host-local data does not).

  Args:
    batch: pytree of host-local numpy arrays (this process's rows).
    sharding: the batch sharding.

  Returns:
    The same pytree of globally sharded jax.Arrays.
  """
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      batch)
