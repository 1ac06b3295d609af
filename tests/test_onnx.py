"""hinet_jax.interop.onnx_export: the ONNX model passes the checker and matches JAX in onnxruntime
at sizes and batches it has never seen."""

import os
import sys

import jax
import numpy as np
import pytest

from hinet_jax import errors
from hinet_jax import models
from hinet_jax.interop import extras
from hinet_jax.interop import onnx_export
from hinet_jax.interop import torch_port

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """A tiny HINet with random weights (norm scales away from 1) and its .onnx file."""
  model = models.HINet(wf=8, depth=3)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: rng.normal(1.0 if 'scale' in str(path) else 0.0, 0.05, a.shape).astype(
          np.float32), models.abstract_params(model))
  out = onnx_export.export_onnx(model, params, tmp_path_factory.mktemp('onnx') / 'tiny.onnx')
  return model, params, out


def test_checker_opset_and_dynamic_axes(exported):
  _, _, out = exported
  proto = onnx.load(out)
  onnx.checker.check_model(proto, full_check=True)
  assert [o.version for o in proto.opset_import] == [onnx_export.OPSET]
  dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
  assert dims == ['batch', 'height', 'width', 3]


def test_onnxruntime_matches_jax_on_unseen_sizes(exported):
  model, params, out = exported
  runtime = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x)[1])
  rng = np.random.default_rng(1)
  # 13x10 takes numpy's reflect pad to 16x12, 2x9 its symmetric pad (the padding exceeds 2 rows).
  for shape in ((2, 13, 10, 3), (1, 2, 9, 3)):
    x = rng.uniform(0, 1, shape).astype(np.float32)
    (got,) = runtime.run(None, {onnx_export.INPUT_NAME: x})
    assert got.shape == shape
    np.testing.assert_allclose(got, np.asarray(apply(params, x)), atol=1e-4)


def test_refusals(exported, monkeypatch):
  model, params, out = exported
  with pytest.raises(errors.OutputExistsError, match='overwrite'):
    onnx_export.export_onnx(model, params, out)
  wrong = models.HINet(wf=8, depth=3, hin_position_left=1)  # No norm at level 0.
  with pytest.raises(torch_port.ConversionError, match='unexpected: down_path_1.0.norm'):
    onnx_export.build_onnx(wrong, params)
  monkeypatch.setitem(sys.modules, 'onnx', None)
  with pytest.raises(extras.MissingExtraError, match=r"hinet-jax\[onnx\]"):
    onnx_export.build_onnx(model, params)
  assert os.path.isfile(out)
