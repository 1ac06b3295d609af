"""Data parallelism: batches split over one mesh axis 'data', everything else replicated."""

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def create_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh named 'data' over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device (parameters, optimizer state, metrics)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def per_process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This process's rows of each global batch (`config.batch_size`); fails naming the fix unless
  the batch divides over the mesh's devices."""
  num_devices = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % num_devices:
    raise ValueError(
        f'config.batch_size={global_batch_size} (the global batch) must be a positive multiple of '
        f'the number of devices ({num_devices}); e.g. --config.batch_size='
        f'{max(1, round(global_batch_size / num_devices)) * num_devices}.')
  return global_batch_size // jax.process_count()


def put_batch(batch: Any, sharding: NamedSharding) -> Any:
  """Global jax.Arrays from this process's rows of `batch` (also multi-process, unlike
  `jax.device_put`)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      batch)
