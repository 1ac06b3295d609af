"""`python -m hinet_jax.prepare_sidd`: the short name of `python -m hinet_jax.data.prepare_sidd` (same flags)."""

from hinet_jax import cli

if __name__ == '__main__':
  cli.prepare_sidd()
