"""`python -m hinet_jax.prepare_gopro`: runs the `hinet-prepare-gopro` program (`hinet_jax.cli`)."""

from hinet_jax import cli

if __name__ == '__main__':
  cli.prepare_gopro()
