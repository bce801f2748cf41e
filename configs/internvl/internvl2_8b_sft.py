"""InternVL2-8B (InternViT-300M-448px + InternLM2.5-7B-chat) supervised fine-tuning, with the freeze options of InternVL's own scripts.

    mmjax convert --hf OpenGVLab/InternVL2-8B --out $CKPT --dtype bfloat16   # the original release layout
    mmjax train --config configs/internvl/internvl2_8b_sft.py --workdir gs://BUCKET/run \
        --config.train.init_from=$CKPT --config.data.tokenizer=$CKPT/hf_extras \
        --config.data.sources='[{"path": "gs://BUCKET/sft/*.arrayrecord"}]'

The architecture comes from the converted checkpoint (`train.init_from`); `model.*` repeats it
(InternVL2-8B's config) so that `mmjax aot` compiles without one. `get_config(FREEZE)` picks what trains, as InternVL's `freeze_backbone` /
`freeze_mlp` / `freeze_llm` flags do (backbone = `encoder`, mlp = `connector`, llm = `decoder`):

    sft (default)  backbone frozen; mlp and llm train (InternVL's fine-tuning recipe)
    mlp            only the mlp trains (InternVL's pre-training stage)
    full           everything trains
    backbone_mlp   llm frozen

Images: dynamic tiling into 448-px tiles, 1-6 tiles plus a thumbnail, 256 tokens per tile.

Checked with `mmjax aot --topology v5p-64` (32 chips, mesh fsdp=32, global batch 128 x 8192
tokens with 14 tile slots per row, grad_accum 2, splash attention, `dots` remat): per chip
arguments 2.91 GiB, temporaries 52.24 GiB, total 55.21 of 95 GiB HBM (in one pass, without
gradient accumulation and with dense logits, the compiler asked for 101.55 GiB of temporaries and
refused).
"""

import ml_collections

# OpenGVLab/InternVL2-8B's config (8.08B parameters; InternLM2 runs as the Llama decoder): used
# when there is no checkpoint (`mmjax aot`); a checkpoint in `train.init_from` brings its own.
INTERN_VIT_300M = dict(image_size=448, patch_size=14, hidden_size=1024, intermediate_size=4096,
                       num_layers=24, num_heads=16, layer_norm_eps=1e-6, norm_type="layer_norm",
                       qkv_bias=True, qk_norm=False, drop_path_rate=0.1)
INTERNLM2_5_7B = dict(vocab_size=92553, hidden_size=4096, intermediate_size=14336, num_layers=32,
                      num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5,
                      tie_embeddings=False, rope=dict(theta=1000000.0, rope_type="dynamic",
                                                      factor=2.0, max_position_embeddings=32768))

TRAINABLE = {
    "sft": ("connector", "decoder"),
    "mlp": ("connector",),
    "full": ("encoder", "connector", "decoder"),
    "backbone_mlp": ("encoder", "connector"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  freeze = arg or "sft"
  if freeze not in TRAINABLE:
    raise ValueError(f"unknown freeze option {freeze!r}; known: {sorted(TRAINABLE)}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(family="internvl", vision=INTERN_VIT_300M, decoder=INTERNLM2_5_7B,
                 image_token_id=92546, downsample_ratio=0.5, dtype="bfloat16",
                 param_dtype="float32", remat_policy="dots", attention_backend="splash")
  c.data = dict(image_preset="internvl", image_overrides=dict(size=448, patch_size=14,
                                                               min_tiles=1, max_tiles=6),
                template="internvl", tokenizer="", image_token="<IMG_CONTEXT>",
                image_start="<img>", image_end="</img>", max_length=8192,
                max_tiles=14, max_images=2, batch_size=128, packing=True,
                num_workers=4, sources=())
  c.optim = dict(lr=4e-5, warmup_steps=100, end_lr_ratio=0.0, b1=0.9, b2=0.999,
                 weight_decay=0.05, clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=1, fsdp=-1, tensor=1, rules="fsdp")
  # Two micro-batches of 64 rows: one pass over 128 rows of 8192 tokens needs ~102 GiB per chip.
  c.train = dict(steps=5000, trainable=TRAINABLE[freeze], grad_accum=2, init_from="",
                 log_every=10)
  c.checkpoint = dict(every_steps=500, keep=2, async_save=True)
  return c
