"""HINet as the paper draws it: the network, its layers, the published presets, and params-only
checkpoints. Imports nothing from the other parts of the package."""

from hinet_jax.models.hinet import (ConvBlock, HINet, Layers, SAM, UpBlock, XLA_LAYERS,
                                    pad_to_multiple, restored_image, size_multiple)
from hinet_jax.models.layers import Conv, HalfInstanceNorm, UpConv2x2, instance_norm
from hinet_jax.models.presets import (LEGACY_KEYS, PRESET_CHECKPOINTS, PRESETS, abstract_params,
                                      count_params, create_model, forward_macs, init_params,
                                      model_config)
from hinet_jax.models.local_stats import (DEFAULT_WINDOW, LocalHalfInstanceNorm, LocalStats,
                                          default_window, window_of_flag, with_local_stats)

__all__ = ['ConvBlock', 'HINet', 'Layers', 'SAM', 'UpBlock', 'XLA_LAYERS', 'pad_to_multiple',
           'restored_image', 'size_multiple', 'Conv', 'HalfInstanceNorm', 'UpConv2x2',
           'instance_norm', 'LEGACY_KEYS', 'PRESET_CHECKPOINTS', 'PRESETS', 'abstract_params',
           'count_params', 'create_model', 'forward_macs', 'init_params', 'model_config',
           'DEFAULT_WINDOW', 'LocalHalfInstanceNorm', 'LocalStats', 'default_window',
           'window_of_flag', 'with_local_stats']
