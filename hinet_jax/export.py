"""`python -m hinet_jax.export`: kept as a short name for `python -m hinet_jax.interop.export`."""

from absl import app

from hinet_jax.interop.export import define_flags, main

if __name__ == '__main__':
  define_flags()
  app.run(main)
