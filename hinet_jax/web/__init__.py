"""The restore page (`hinet-serve`): Gradio, imported by `page.py` only (the `serve` extra)."""
