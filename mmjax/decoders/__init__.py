"""Language-model decoders."""

from mmjax.decoders.llama import Decoder, DecoderConfig, init_cache
from mmjax.decoders.t5 import T5
from mmjax.decoders.t5_config import T5Config

__all__ = ["Decoder", "DecoderConfig", "T5", "T5Config", "init_cache"]
