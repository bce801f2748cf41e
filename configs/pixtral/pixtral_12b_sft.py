"""Pixtral-12B supervised fine-tuning: the projector and the language model (Mistral NeMo 12B)
train; the Pixtral vision tower (2-D RoPE, every image at its own size) stays frozen.

    mmjax convert --hf mistral-community/pixtral-12b --out $CKPT --dtype bfloat16
    mmjax train --config configs/pixtral/pixtral_12b_sft.py --workdir gs://BUCKET/run \
        --config.train.init_from=$CKPT --config.data.tokenizer=$CKPT/hf_extras \
        --config.data.sources='[{"path": "gs://BUCKET/sft/*.arrayrecord"}]'

Images are shrunk to fit 768 px (the release allows 1024): at most 48 x 48 patches of 16 px, whose
placeholders (`[IMG]` per patch column, `[IMG_BREAK]` per row, the last `[IMG_END]`) take 2352
of a row's 4096 tokens. Batch 128, lr 1e-5, 3% warmup, cosine.

Checked with `mmjax aot --topology v5p-64` (32 chips, mesh fsdp=32, global batch 128 x 4096
tokens, 2304 patch slots a row, splash attention, `dots` remat): per chip arguments 4.37 GiB,
temporaries 62.84 GiB, total 67.32 of 95 GiB HBM; 12.68 B parameters, 12.28 B trained.
"""

import ml_collections

# mistral-community/pixtral-12b's config.json (12.7B parameters).
PIXTRAL_VIT = dict(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16,
                   patch_size=16, image_size=1024, activation="silu")
MISTRAL_NEMO_12B = dict(vocab_size=131072, hidden_size=5120, intermediate_size=14336,
                        num_layers=40, num_heads=32, num_kv_heads=8, head_dim=128,
                        rms_norm_eps=1e-5, rope=dict(theta=1e9), tie_embeddings=False,
                        model_type="mistral")
PATCHES = 48  # a side, at 768 px


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(family="pixtral", vision=PIXTRAL_VIT,
                 projector=dict(kind="mlp2x", activation="gelu", use_bias=True),
                 decoder=MISTRAL_NEMO_12B, image_token_id=10, feature_layers=(-1,),
                 dtype="bfloat16", param_dtype="float32", remat_policy="dots",
                 attention_backend="splash")
  # max_tiles: the patch slots of a row, one image of the largest size.
  c.data = dict(image_preset="pixtral", image_overrides=dict(size=PATCHES * 16, patch_size=16),
                template="tokenizer", tokenizer="", image_token="[IMG]", max_length=4096,
                max_tiles=PATCHES * PATCHES, max_images=1, batch_size=128, packing=True,
                num_workers=8, sources=())
  c.optim = dict(lr=1e-5, warmup_steps=30, end_lr_ratio=0.0, b1=0.9, b2=0.999, weight_decay=0.0,
                 clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=1, fsdp=-1, tensor=1, rules="fsdp")
  c.train = dict(steps=1000, trainable=("connector", "decoder"), grad_accum=1, init_from="",
                 log_every=10)
  c.checkpoint = dict(every_steps=250, keep=2, async_save=True)
  return c
