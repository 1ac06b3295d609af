"""`python -m hinet_jax.export`: the short name of `python -m hinet_jax.interop.export` (same flags)."""

from hinet_jax import cli

if __name__ == '__main__':
  cli.export()
