"""hinet-jax: HINet (Half Instance Normalization Network) in JAX/Flax.

Importing this package needs neither TensorFlow nor PyTorch.

  model, params = hinet_jax.load_pretrained('ckpt/sidd-1x')
  stage1, stage2 = model.apply({'params': params}, x)   # x: float32 NHWC in [0, 1]
"""

from hinet_jax.models.hinet import HINet, PRESETS, create_model, count_params, forward_macs
from hinet_jax.models.pretrained import load_pretrained, save_params

__version__ = '0.1.0'
