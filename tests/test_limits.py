"""Token ids the model can embed pass the limits check; ids past its embedding table do not."""

import numpy as np
import pytest

from mmjax import limits
from mmjax.decoders.config import DecoderConfig


def test_rows_past_the_vocabulary_are_tokens_of_the_embedding_table():
  config = DecoderConfig(vocab_size=128, hidden_size=8, intermediate_size=8, num_layers=1,
                         num_heads=1, num_kv_heads=1, head_dim=8,
                         extra_embeddings=8)  # Llama 3.2 Vision's layout
  limits.check_token_ids(np.array([[1, 128, 135]]), config)  # 128: the image token
  with pytest.raises(ValueError, match=r"input_ids\[0, 1\] is 136.*\[0, 136\)"):
    limits.check_token_ids(np.array([[1, 136]]), config)
