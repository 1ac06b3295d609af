"""A HINet as an ONNX model (opset 17) with a dynamic batch, height and width.

The graph is written here with `onnx.helper`, node by node as the official `hinet_arch.py` wires
HINet, from the official-layout tensors of the exact `.pth` mapping (`torch_port.flax_to_torch`):
no converter stands between the weights and the file. jax2onnx cannot share an environment with
this project's orbax pin, and the PyTorch route would need torch at export time.

Input `image`: float32 NHWC in [0, 1], any size; output `restored`, same shape. The reflect padding
to a multiple of 2^(depth-1) and the crop back are in the graph (`models.pad_to_multiple`).
"""

from typing import Any, List, Mapping, Optional

from absl import logging
import numpy as np

from hinet_jax import files
from hinet_jax import models
from hinet_jax.interop import extras
from hinet_jax.interop import torch_port
from hinet_jax.models import layers

OPSET = 17
INPUT_NAME = 'image'
OUTPUT_NAME = 'restored'


class _Graph:
  """Nodes and initializers of an ONNX graph under construction, with fresh value names."""

  def __init__(self, onnx: Any, weights: Mapping[str, np.ndarray], relu_slope: float):
    self.onnx, self.weights, self.relu_slope = onnx, weights, relu_slope
    self.nodes, self.initializers, self.count = [], [], 0

  def const(self, value: Any, name: Optional[str] = None) -> str:
    name = name or f'const_{len(self.initializers)}'
    self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
    return name

  def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs) -> Any:
    self.count += 1
    names = [f'{op_type.lower()}_{self.count}_{i}' for i in range(outputs)]
    self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names, **attrs))
    return names[0] if outputs == 1 else names

  def param(self, name: str) -> str:
    return self.const(self.weights[name], name)

  def conv(self, x: str, name: str, stride: int = 1) -> str:
    """The official conv `name`; its padding follows from its kernel (3 and 4: 1, 1: 0)."""
    kernel = self.weights[f'{name}.weight'].shape[-1]
    inputs = [self.param(f'{name}.weight')]
    if f'{name}.bias' in self.weights:
      inputs.append(self.param(f'{name}.bias'))
    return self.op('Conv', x, *inputs, strides=[stride] * 2, pads=[min(kernel // 2, 1)] * 4)

  def lrelu(self, x: str) -> str:
    return self.op('LeakyRelu', x, alpha=self.relu_slope)


def _conv_block(g: _Graph, x: str, name: str, enc: Optional[str] = None,
                dec: Optional[str] = None) -> Any:
  """`UNetConvBlock`: `out`, or `(down, out)` where the block has a downsampling conv."""
  out = g.conv(x, f'{name}.conv_1')
  if f'{name}.norm.weight' in g.weights:
    half = g.weights[f'{name}.norm.weight'].shape[0]
    first, second = g.op('Split', out, g.const(np.array([half, half], np.int64)), outputs=2,
                         axis=1)
    first = g.op('InstanceNormalization', first, g.param(f'{name}.norm.weight'),
                 g.param(f'{name}.norm.bias'), epsilon=layers.INSTANCE_NORM_EPS)
    out = g.op('Concat', first, second, axis=1)
  out = g.lrelu(g.conv(g.lrelu(out), f'{name}.conv_2'))
  out = g.op('Add', out, g.conv(x, f'{name}.identity'))
  if enc is not None:
    out = g.op('Add', g.op('Add', out, g.conv(enc, f'{name}.csff_enc')),
               g.conv(dec, f'{name}.csff_dec'))
  if f'{name}.downsample.weight' not in g.weights:
    return out
  return g.conv(out, f'{name}.downsample', stride=2), out


def _unet(g: _Graph, x: str, stage: int, depth: int, csff: Optional[List] = None):
  """One stage: (last decoder output, encoder skips, decoder outputs), as `HINet._unet`."""
  encs = []
  for i in range(depth - 1):
    x, skip = _conv_block(g, x, f'down_path_{stage}.{i}', *(csff[i] if csff else ()))
    encs.append(skip)
  x = _conv_block(g, x, f'down_path_{stage}.{depth - 1}')
  decs = []
  for j in range(depth - 1):
    up = g.op('ConvTranspose', x, g.param(f'up_path_{stage}.{j}.up.weight'),
              g.param(f'up_path_{stage}.{j}.up.bias'), strides=[2, 2])
    skip = g.conv(encs[-j - 1], f'skip_conv_{stage}.{j}')
    x = _conv_block(g, g.op('Concat', up, skip, axis=1), f'up_path_{stage}.{j}.conv_block')
    decs.append(x)
  return x, encs, decs


def _hinet(g: _Graph, image: str, depth: int) -> str:
  """HINet's stage-2 output for NCHW `image` (a multiple of 2^(depth-1) in size)."""
  d1, encs, decs = _unet(g, g.conv(image, 'conv_01'), 1, depth)
  stage1 = g.op('Add', g.conv(d1, 'sam12.conv2'), image)
  attention = g.op('Sigmoid', g.conv(stage1, 'sam12.conv3'))
  feat = g.op('Add', g.op('Mul', g.conv(d1, 'sam12.conv1'), attention), d1)
  x = g.conv(g.op('Concat', g.conv(image, 'conv_02'), feat, axis=1), 'cat12')
  csff = [(encs[i], decs[-i - 1]) for i in range(depth - 1)]
  d2, _, _ = _unet(g, x, 2, depth, csff)
  return g.op('Add', g.conv(d2, 'last'), image)


def _pad_rows(g: _Graph, n: str, size: str, symmetric: str) -> str:
  """Source rows of numpy's reflect (or, where `symmetric`, symmetric) pad of `n` to `size`."""
  one, two = g.const(np.int64(1)), g.const(np.int64(2))
  idx = g.op('Range', g.const(np.int64(0)), size, one)
  period = g.op('Max', g.op('Mul', two, g.op('Sub', n, one)), one)
  m = g.op('Mod', idx, period)
  reflect = g.op('Where', g.op('Less', m, n), m, g.op('Sub', period, m))
  m = g.op('Mod', idx, g.op('Mul', two, n))
  sym = g.op('Where', g.op('Less', m, n), m, g.op('Sub', g.op('Sub', g.op('Mul', two, n), one), m))
  return g.op('Where', symmetric, sym, reflect)


def _padded(g: _Graph, x: str, multiple: int) -> tuple:
  """`(padded x, h, w)`: NCHW `x` padded as `models.pad_to_multiple` does, and its size."""
  shape = g.op('Shape', x)
  h, w = (g.op('Gather', shape, g.const(np.int64(axis))) for axis in (2, 3))
  m = g.const(np.int64(multiple))
  hp, wp = (g.op('Mul', g.op('Div', g.op('Add', n, g.const(np.int64(multiple - 1))), m), m)
            for n in (h, w))
  symmetric = g.op('Or', g.op('GreaterOrEqual', g.op('Sub', hp, h), h),
                   g.op('GreaterOrEqual', g.op('Sub', wp, w), w))
  x = g.op('Gather', x, _pad_rows(g, h, hp, symmetric), axis=2)
  return g.op('Gather', x, _pad_rows(g, w, wp, symmetric), axis=3), h, w


def build_onnx(model: models.HINet, params: Any) -> Any:
  """The `onnx.ModelProto` of `model` with `params`; a params tree that is not this HINet's is one
  error listing the tensors that differ."""
  onnx = extras.require('onnx', 'onnx', '--format=onnx')
  weights = torch_port.flax_to_torch(params)
  torch_port.torch_to_flax(weights, models.create_model(**models.model_config(model)))
  g = _Graph(onnx, weights, model.relu_slope)
  nchw = g.op('Transpose', INPUT_NAME, perm=[0, 3, 1, 2])
  padded, h, w = _padded(g, nchw, model.size_multiple)
  restored = _hinet(g, padded, model.depth)
  ends = g.op('Concat', *(g.op('Unsqueeze', n, g.const(np.array([0], np.int64))) for n in (h, w)),
              axis=0)
  restored = g.op('Slice', restored, g.const(np.array([0, 0], np.int64)), ends,
                  g.const(np.array([2, 3], np.int64)))
  g.nodes.append(onnx.helper.make_node('Transpose', [restored], [OUTPUT_NAME], perm=[0, 2, 3, 1]))
  dims = ['batch', 'height', 'width', model.in_chn]
  inputs, outputs = ([onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)]
                     for name in (INPUT_NAME, OUTPUT_NAME))
  graph = onnx.helper.make_graph(g.nodes, 'hinet', inputs, outputs, initializer=g.initializers)
  proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid('', OPSET)],
                                 producer_name='hinet-jax')
  onnx.checker.check_model(proto, full_check=True)
  return proto


def export_onnx(model: models.HINet, params: Any, output: files.PathLike, *,
                overwrite: bool = False) -> str:
  """Writes `model` as an `.onnx` file at `output` (local or gs://), whole or not at all.

  Returns:
    The file's path (absolute, for a local one).
  """
  output = files.new_output(output, overwrite)
  data = build_onnx(model, params).SerializeToString()
  files.write_bytes(output, data)
  logging.info('Wrote ONNX %s (opset %d, %d bytes).', output, OPSET, len(data))
  return output
