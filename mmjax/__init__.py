"""mmjax: TPU-native vision-language models in JAX/Flax, at parity with transformers."""

__version__ = "0.1.0"
