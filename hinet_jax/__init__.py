"""hinet-jax: HINet (Half Instance Normalization Network) in JAX/Flax.

Importing this package needs neither TensorFlow nor PyTorch.

  model, params = hinet_jax.load_pretrained('ckpt/sidd-1x')
  stage1, stage2 = model.apply({'params': params}, x)   # x: float32 NHWC in [0, 1]
"""

import sys

from hinet_jax.api import create_model, load_pretrained
from hinet_jax.evaluation import metrics
from hinet_jax.models import HINet, PRESETS, count_params, forward_macs, model_config
from hinet_jax.models.pretrained import save_params

# `hinet_jax.metrics` is the evaluation wing's module under a short name; registering it makes
# `import hinet_jax.metrics` give that same module, wherever it lives.
sys.modules.setdefault(f'{__name__}.metrics', metrics)

__version__ = '0.2.0'
