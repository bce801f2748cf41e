"""A 70B-class LLaVA (CLIP ViT-L/14-336 + Llama-2-70B-shaped decoder), stage 2 fine-tuning.

    mmjax train --config configs/llava/llava_70b_stage2.py --workdir gs://BUCKET/run \
        --config.train.init_from=$RUN1/model --config.data.tokenizer=$LLM/hf_extras \
        --config.data.sources='[{"path": "gs://BUCKET/llava_v1_5_mix665k.arrayrecord"}]'

The LLaVA-1.5 stage 2 recipe (batch 128, lr 2e-5, frozen tower) with an 80-layer, width-8192,
grouped-query (64 query / 8 key-value heads) decoder. Full fine-tuning keeps float32 master
weights and AdamW moments (~1.1 TB), sharded over all chips.

Checked with `mmjax aot --topology v5p-256` (128 chips, mesh fsdp=128, global batch 128 x 2048
tokens, 128 images, splash attention, `dots` remat): per chip arguments 6.04 GiB, temporaries
32.80 GiB, total 38.91 of 95 GiB HBM (`full` remat in the decoder needed 18.08 GiB in all with
dense logits, for more recomputation: `--config.model.remat_policy.decoder=full`).
"""

import ml_collections

from llava15_7b_stage1 import model
from llava15_7b_stage2 import get_config as stage2_config

LLAMA2_70B = dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_layers=80,
                  num_heads=64, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5,
                  rope=dict(theta=10000.0), tie_embeddings=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = stage2_config(arg)
  c.model = model(remat_policy=dict(encoder="dots", decoder="dots"))
  c.model.decoder = LLAMA2_70B
  return c
