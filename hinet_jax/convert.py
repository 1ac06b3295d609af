"""`python -m hinet_jax.convert`: the short name of `python -m hinet_jax.interop.convert` (same flags)."""

from hinet_jax import cli

if __name__ == '__main__':
  cli.convert()
