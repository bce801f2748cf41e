"""Llama-3.2-90B-Vision supervised fine-tuning: the 11B's vision tower and a Llama-3.1-70B-class
decoder of 100 layers, 20 of them cross-attention layers (every fifth from layer 3).
`get_config("recipe")` freezes the language model (Llama 3.2's own recipe).

    mmjax train --config configs/mllama/llama32_90b_vision_sft.py --workdir gs://BUCKET/run \
        --config.train.init_from=$CKPT --config.data.tokenizer=$CKPT/hf_extras \
        --config.data.sources='[{"path": "gs://BUCKET/sft/*.arrayrecord"}]'

Meant for `mmjax aot --topology v5p-256` (128 chips, mesh fsdp=128, global batch 128 x 2048
tokens, splash attention, `dots` remat; the tower fully rematerialised): fits (the README's
preset table has the per-chip memory).
"""

import ml_collections

from llama32_11b_vision_sft import make_config

TEXT_90B = dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_layers=100,
                num_heads=64, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5,
                cross_attention_layers=tuple(range(3, 100, 5)),
                rope=dict(theta=500000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192,
                          max_position_embeddings=131072))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return make_config(TEXT_90B, arg or "sft", batch_size=128, steps=5000)
