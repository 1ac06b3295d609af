"""`python -m hinet_jax.convert`: runs the `hinet-convert` program (`hinet_jax.cli`)."""

from hinet_jax import cli

if __name__ == '__main__':
  cli.convert()
