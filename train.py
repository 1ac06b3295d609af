"""Trains HINet: `python train.py --config=configs/sidd.py --workdir=DIR [--config.x=y ...]`.

A thin entry point at the repository top; the program is `hinet_jax/cli/train.py` (flags, usage,
multi-host options), also installed as the `hinet-train` command.
"""

from hinet_jax.cli import train

if __name__ == '__main__':
  train.run()
