"""The console scripts: `hinet-train` and `hinet-eval` are `train.py` and `eval.py`, `hinet-X` is
`python -m hinet_jax.X`. A program's module (and its flags) is imported only when it runs.
"""

from hinet_jax.cli import runner


def convert():
  """`hinet-convert`: official PyTorch weights <-> hinet-jax checkpoints (needs torch)."""
  from hinet_jax.interop import convert as convert_lib  # pylint: disable=g-import-not-at-top
  runner.run(convert_lib.main)


def export():
  """`hinet-export`: a checkpoint as a SavedModel, StableHLO, ONNX or the Hub layout."""
  from hinet_jax.cli import exporter as export_lib  # pylint: disable=g-import-not-at-top
  export_lib.define_flags()
  runner.run(export_lib.main)


def prepare_sidd():
  """`hinet-prepare-sidd`: cuts SIDD-Medium into the official training crops."""
  from hinet_jax.data import prepare_sidd as prepare_lib  # pylint: disable=g-import-not-at-top
  prepare_lib.define_flags()
  runner.run(prepare_lib.main)


def prepare_gopro():
  """`hinet-prepare-gopro`: cuts the GoPro training frames into the official 512x512 crops."""
  from hinet_jax.data import prepare_gopro as prepare_lib  # pylint: disable=g-import-not-at-top
  prepare_lib.define_flags()
  runner.run(prepare_lib.main)
