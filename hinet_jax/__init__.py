"""hinet-jax: HINet (Half Instance Normalization Network) in JAX/Flax, without TensorFlow or torch.

  predictor = hinet_jax.Predictor(*hinet_jax.load_pretrained('ckpt/sidd-1x'), tile=256)
  restored = predictor(noisy)  # HWC, any size
"""

import sys

from hinet_jax.api import create_model, load_pretrained
from hinet_jax.evaluation import metrics
from hinet_jax.evaluation.predictor import Predictor
from hinet_jax.models import HINet, PRESETS, count_params, forward_macs, model_config
from hinet_jax.models.pretrained import save_params

# `import hinet_jax.metrics` gives the evaluation wing's module.
sys.modules.setdefault(f'{__name__}.metrics', metrics)

__version__ = '0.2.0'

__all__ = ['create_model', 'load_pretrained', 'metrics', 'Predictor', 'HINet', 'PRESETS',
           'count_params', 'forward_macs', 'model_config', 'save_params', '__version__']
