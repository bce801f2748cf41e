"""Language-model decoders."""

from mmjax.decoders.llama import Decoder, DecoderConfig, init_cache

__all__ = ["Decoder", "DecoderConfig", "init_cache"]
