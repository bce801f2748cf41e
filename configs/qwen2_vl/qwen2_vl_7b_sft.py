"""Qwen2-VL-7B-Instruct supervised fine-tuning: the vision tower (with its merger) frozen, the decoder
trained, images resized to a max-pixels budget.

    mmjax convert --hf Qwen/Qwen2-VL-7B-Instruct --out $CKPT --dtype bfloat16
    mmjax train --config configs/qwen2_vl/qwen2_vl_7b_sft.py --workdir gs://BUCKET/run \
        --config.train.init_from=$CKPT --config.data.tokenizer=$CKPT/hf_extras \
        --config.data.sources='[{"path": "gs://BUCKET/sft/*.arrayrecord"}]'

The architecture comes from the converted checkpoint (`train.init_from`); `model.*` repeats it
(Qwen2-VL-7B-Instruct's config) so that the recipe also builds without one (`mmjax aot`).
`get_config("MAX_PIXELS")` changes the pixel budget (default 1003520 = 1280 merged tokens of
28x28 px); `data.max_tiles` is the per-row patch budget it implies.

Checked with `mmjax aot --topology v5p-64` (32 chips, mesh fsdp=32, global batch 128 x 4096
tokens with a 10240-patch budget per row, splash attention in the decoder, `dots` remat): per chip
arguments 3.03 GiB, temporaries 50.08 GiB, total 53.17 of 95 GiB HBM.
"""

import ml_collections

# Qwen/Qwen2-VL-7B-Instruct's config.json (8.29B parameters): used when there is no checkpoint
# (`mmjax aot`); a checkpoint in `train.init_from` brings its own architecture.
QWEN2_VL_7B_VISION = dict(hidden_size=1280, intermediate_size=5120, num_layers=32, num_heads=16,
                          activation="quick_gelu", patch_size=14, temporal_patch_size=2,
                          spatial_merge_size=2)
QWEN2_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                num_heads=28, num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6, qkv_bias=True,
                tie_embeddings=False, rope=dict(theta=1000000.0, max_position_embeddings=32768,
                                                mrope_section=(16, 24, 24)))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  max_pixels = int(arg) if arg else 28 * 28 * 1280
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(family="qwen2_vl", vision=QWEN2_VL_7B_VISION, decoder=QWEN2_7B,
                 image_token_id=151655, video_token_id=151656, dtype="bfloat16",
                 param_dtype="float32", remat_policy="dots", attention_backend="splash")
  c.data = dict(image_preset="qwen2_vl",
                image_overrides=dict(patch_size=14, merge_size=2, min_pixels=56 * 56,
                                     max_pixels=max_pixels),
                template="tokenizer", tokenizer="", image_token="<|image_pad|>",
                image_start="<|vision_start|>", image_end="<|vision_end|>", max_length=4096,
                max_tiles=2 * max_pixels // (14 * 14), max_images=2, mrope=True, batch_size=128,
                packing=True, num_workers=4, sources=())
  c.optim = dict(lr=1e-5, warmup_steps=100, end_lr_ratio=0.0, b1=0.9, b2=0.999, weight_decay=0.0,
                 clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=1, fsdp=-1, tensor=1, rules="fsdp")
  c.train = dict(steps=3000, trainable=("decoder",), grad_accum=1, init_from="", log_every=10)
  c.checkpoint = dict(every_steps=500, keep=2, async_save=True)
  return c
