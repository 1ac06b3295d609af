"""`python -m hinet_jax.convert`: kept as a short name for `python -m hinet_jax.interop.convert`."""

from absl import app

from hinet_jax.interop.convert import main

if __name__ == '__main__':
  app.run(main)
