"""KV-cache generation: prefill, a jit-compiled decode loop, sampling, tensor-parallel params."""

from mmjax.generation.loop import GenerateConfig, Generator, generate
from mmjax.generation.models import adapter_for
from mmjax.generation.sampling import Sampling, next_token, warp

__all__ = ["GenerateConfig", "Generator", "Sampling", "adapter_for", "generate",
           "next_token", "warp"]
