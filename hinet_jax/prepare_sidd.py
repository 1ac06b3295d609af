"""`python -m hinet_jax.prepare_sidd`: runs the `hinet-prepare-sidd` program (`hinet_jax.cli`)."""

from hinet_jax import cli

if __name__ == '__main__':
  cli.prepare_sidd()
