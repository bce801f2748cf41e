"""LLaVA-1.5-13B stage 2 (visual instruction tuning): stage 2 of the 7B recipe on Vicuna-13B.

    mmjax train --config configs/llava/llava15_13b_stage2.py --workdir $RUN2 \
        --config.train.init_from=$RUN1/model --config.data.tokenizer=$LLM/hf_extras \
        --config.data.sources='[{"path": "llava_v1_5_mix665k.arrayrecord"}]'

Recipe as in the LLaVA-1.5 paper (batch 128, lr 2e-5, one epoch of the 665K mixture); only the
language model is larger (40 layers of width 5120). Stage 1 is the 7B stage 1 file with
`--config.model.decoder` set to `VICUNA_13B`.

Checked with `mmjax aot --topology v5p-64` (32 chips, mesh fsdp=32, global batch 128 x 2048
tokens, 128 images, splash attention, `dots` remat): per chip arguments 4.61 GiB, temporaries
38.78 GiB, total 43.45 of 95 GiB HBM.
"""

import ml_collections

from llava15_7b_stage2 import get_config as stage2_config

VICUNA_13B = dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_layers=40,
                  num_heads=40, num_kv_heads=40, head_dim=128, rms_norm_eps=1e-5,
                  rope=dict(theta=10000.0), tie_embeddings=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = stage2_config(arg)
  c.model.decoder = VICUNA_13B
  return c
