"""The command-line programs, as the console scripts that `pip install` puts on PATH.

| command | the same as |
|---|---|
| `hinet-train` | `python train.py` (`hinet_jax/cli/train.py`) |
| `hinet-eval` | `python eval.py` (`hinet_jax/cli/eval.py`) |
| `hinet-convert` | `python -m hinet_jax.convert` (`hinet_jax/interop/convert.py`) |
| `hinet-export` | `python -m hinet_jax.export` (`hinet_jax/interop/export.py`) |
| `hinet-prepare-sidd` | `python -m hinet_jax.prepare_sidd` (`hinet_jax/data/prepare_sidd.py`) |
| `hinet-prepare-gopro` | `python -m hinet_jax.prepare_gopro` (`hinet_jax/data/prepare_gopro.py`) |

Each program defines its own absl flags, so this module imports none of them until one is run.
"""

from hinet_jax.cli import runner


def convert():
  """`hinet-convert`: official PyTorch weights <-> hinet-jax checkpoints (needs torch)."""
  from hinet_jax.interop import convert as convert_lib  # pylint: disable=g-import-not-at-top
  runner.run(convert_lib.main)


def export():
  """`hinet-export`: a TF SavedModel of a checkpoint (needs the `export` extra)."""
  from hinet_jax.interop import export as export_lib  # pylint: disable=g-import-not-at-top
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
