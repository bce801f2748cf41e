"""A tiny Qwen2-VL (packed native-resolution ViT, 2x2 merger, M-RoPE decoder) for CPU runs.

    mmjax train --config configs/tiny/qwen2_vl.py --workdir /tmp/tiny_qwen2_vl \
        --config.data.tokenizer=TOKENIZER_DIR --config.data.sources='[{"path": "train.jsonl"}]' \
        --config.model.image_token_id=IMAGE_PAD_ID --config.model.video_token_id=VIDEO_PAD_ID

The token ids must be the tokenizer's `<|image_pad|>` / `<|video_pad|>` ids (the data pipeline
writes those; nothing checks them under jit, and a mismatch leaves the placeholders unfilled),
and the tokenizer must fit `decoder.vocab_size`. `configs/tiny/qwen2_vl.py:qwen2_5_vl` and
`:qwen3_vl` (`get_config("qwen2_5_vl")`, `get_config("qwen3_vl")`) give the Qwen2.5-VL (windows,
RMSNorm, SwiGLU) and Qwen3-VL (DeepStack, learned positions) variants at the same size. The model
section reads with `mmjax.models.qwen_vl.config_from_dict`.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  family = arg or "qwen2_vl"
  c = ml_collections.ConfigDict()
  c.seed = 0
  width, vit = 128, 64
  vision = dict(hidden_size=vit, intermediate_size=2 * vit, num_layers=2, num_heads=4,
                activation="quick_gelu", patch_size=8, temporal_patch_size=2, spatial_merge_size=2)
  if family == "qwen2_5_vl":
    vision.update(activation="silu", window_size=32, fullatt_block_indexes=(1,),
                  tokens_per_second=2.0)
  elif family == "qwen3_vl":
    vision.update(activation="gelu_pytorch_tanh", num_position_embeddings=64,
                  deepstack_visual_indexes=(0,))
  c.model = dict(
      family=family,
      vision=vision,
      decoder=dict(vocab_size=512, hidden_size=width, intermediate_size=2 * width, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=width // 4, rms_norm_eps=1e-6,
                   qkv_bias=family != "qwen3_vl", qk_norm=family == "qwen3_vl",
                   tie_embeddings=True,
                   rope=dict(theta=10000.0, mrope_section=(4, 6, 6) if family != "qwen3_vl"
                             else (8, 4, 4))),
      image_token_id=500,
      video_token_id=501,
      dtype="float32",
      param_dtype="float32",
      remat_policy="none",
  )
  # 32x32 .. 64x64 pixels: 4 .. 16 merged tokens per image.
  c.data = dict(image_preset="qwen2_vl",
                image_overrides=dict(patch_size=8, merge_size=2, min_pixels=32 * 32,
                                     max_pixels=64 * 64),
                template="chatml", tokenizer="", image_token="<|image_pad|>",
                image_start="<|vision_start|>", image_end="<|vision_end|>", max_length=128,
                max_tiles=256, max_images=4, mrope=True, batch_size=8, sources=())
  c.optim = dict(lr=1e-3, warmup_steps=20, end_lr_ratio=0.1, b1=0.9, b2=0.98, weight_decay=0.01,
                 clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=-1, fsdp=1, tensor=1, rules="fsdp")
  c.train = dict(steps=200, trainable=("encoder", "decoder"), grad_accum=1, init_from="",
                 log_every=10)
  c.checkpoint = dict(every_steps=100, keep=2, async_save=True)
  return c
