"""`Predictor`: a model with one set of weights, ready to restore images of any size."""

from typing import Any, Optional, Union

import jax
import numpy as np

from hinet_jax import backends
from hinet_jax import models
from hinet_jax.evaluation import inference


class Predictor:
  """A model with its weights prepared once for the backend, restoring images of any size.

  It holds the prepared weights (the CPU backend's packed kernels) and only the raw parameters
  without a prepared twin, so the caller's parameters can be freed. `model.apply` is for
  training and research. Attributes: `forward` (`inference.Forward`), `variables`, `options`.
  """

  def __init__(self, model: Any, params: Any, *,
               backend: Union[str, backends.Backend] = 'auto', precision: str = 'highest',
               tile: Optional[int] = None, overlap: int = 0, blend: str = 'average',
               self_ensemble: bool = False, batch_size: int = 4,
               local_stats: Optional[int] = None, low_memory: bool = False):
    """`model` (a HINet, or any module whose last output is the restored image) with `params`
    on `backend` at `precision`; the rest are `inference.restore_image` options (tile None:
    whole images; overlap 0: HINet's grid; self_ensemble: the x8 flips/rotations).
    `local_stats`: TLC's window in pixels; `low_memory`: smaller, slower CPU kernels (README)."""
    if local_stats:
      model = models.with_local_stats(model, local_stats)
    self.forward = inference.Forward(model, backend, precision=precision)
    self.variables = jax.device_put(self.forward.backend.inference_variables(
        self.forward.model, params, keep_params=False, low_memory=low_memory))
    self.options = dict(tile=tile, overlap=overlap, blend=blend, self_ensemble=self_ensemble,
                        batch_size=batch_size)

  def __call__(self, image: np.ndarray, *, progress: Optional[inference.ProgressFn] = None,
               **options) -> np.ndarray:
    """HWC float in [0, 1] (or uint8/uint16), any size -> float32 HWC, raw (not clipped), or
    rounded to `bits=8|16`; `progress(done, total)` follows the tiles, `options` replace the
    constructor's for this call (`inference.restore_image`).
    """
    return inference.restore_image(self.forward.on_variables, self.variables, image,
                                   in_flight=self.forward.backend.calls_in_flight,
                                   progress=progress, **{**self.options, **options})

  def predict(self, x: jax.Array) -> jax.Array:
    """The model's restored output for a float32 NHWC batch (one compile per shape)."""
    return self.forward.on_variables(self.variables, x)
