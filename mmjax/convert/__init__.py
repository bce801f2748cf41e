"""Strict, streaming conversion between Hugging Face checkpoints and mmjax (Orbax) checkpoints."""
