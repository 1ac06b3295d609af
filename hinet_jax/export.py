"""`python -m hinet_jax.export`: runs the `hinet-export` program (`hinet_jax.cli`)."""

from hinet_jax import cli

if __name__ == '__main__':
  cli.export()
