"""Llama-3.2-11B-Vision supervised fine-tuning: the tiled vision tower, the projector and a
Llama-3.1-8B-class decoder with 8 cross-attention layers, all training (`get_config("recipe")`:
Llama 3.2's own recipe, the language model frozen and the vision tower, the projector and the
cross-attention layers training).

    mmjax convert --hf meta-llama/Llama-3.2-11B-Vision-Instruct --out $CKPT --dtype bfloat16
    mmjax train --config configs/mllama/llama32_11b_vision_sft.py --workdir gs://BUCKET/run \
        --config.train.init_from=$CKPT --config.data.tokenizer=$CKPT/hf_extras \
        --config.data.sources='[{"path": "gs://BUCKET/sft/*.arrayrecord"}]'

The architecture comes from the converted checkpoint (`train.init_from`); `model.*` repeats it
(the hub config) so that `mmjax aot` compiles without one. Images: up to 4 tiles of 560 px
(1601 image states per tile), one image slot per row.

Checked with `mmjax aot --topology v5p-64` (32 chips, mesh fsdp=32, global batch 128 x 2048
tokens, splash attention for self- and cross-attention, `dots` remat).
"""

import ml_collections

VISION = dict(image_size=560, patch_size=14, hidden_size=1280, intermediate_size=5120,
              num_layers=32, num_global_layers=8, num_heads=16, max_num_tiles=4,
              intermediate_layers_indices=(3, 7, 15, 23, 30), vision_output_dim=7680,
              norm_eps=1e-5)
TEXT_11B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=40,
                num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5,
                cross_attention_layers=tuple(range(3, 40, 5)),
                rope=dict(theta=500000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192,
                          max_position_embeddings=131072))

TRAINABLE = {
    "sft": ("encoder", "connector", "decoder"),
    "recipe": ("encoder", "connector", "cross_attention"),
}


def make_config(text: dict, stage: str, batch_size: int, steps: int) -> ml_collections.ConfigDict:
  if stage not in TRAINABLE:
    raise ValueError(f"unknown stage {stage!r}; known: {sorted(TRAINABLE)}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(family="mllama", vision=VISION, decoder=text, image_token_id=128256,
                 dtype="bfloat16", param_dtype="float32",
                 # The tower attends over 4 tiles x 1608 tokens with a dense mask (its tiles'
                 # mask is no splash mask): its layers keep nothing for the backward pass.
                 remat_policy=dict(encoder="full", decoder="dots"),
                 attention_backend="splash")
  c.data = dict(image_preset="mllama", template="tokenizer", tokenizer="",
                image_token="<|image|>", max_length=2048, max_tiles=4, max_images=1,
                batch_size=batch_size, packing=True, num_workers=4, sources=())
  c.optim = dict(lr=1e-5, warmup_steps=100, end_lr_ratio=0.0, b1=0.9, b2=0.95,
                 weight_decay=0.1, clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=1, fsdp=-1, tensor=1, rules="fsdp")
  c.train = dict(steps=steps, trainable=TRAINABLE[stage], grad_accum=1, init_from="",
                 log_every=10)
  c.checkpoint = dict(every_steps=500, keep=2, async_save=True)
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return make_config(TEXT_11B, arg or "sft", batch_size=128, steps=5000)
