"""`python -m hinet_jax.serve`: runs the `hinet-serve` program (`hinet_jax.cli.serve`)."""

from hinet_jax.cli import serve

if __name__ == '__main__':
  serve.run()
