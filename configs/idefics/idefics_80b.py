"""IDEFICS-80B (the open Flamingo) trained with Flamingo's recipe on interleaved web documents:
the OpenCLIP ViT-H/14 tower and the LLaMA-65B language model stay frozen; the Perceiver
resampler, the gated cross-attention layers (one before every 4th decoder layer, gates from zero)
and the two additional embedding rows train.

    mmjax convert --hf HuggingFaceM4/idefics-80b --out $CKPT --dtype bfloat16
    mmjax train --config configs/idefics/idefics_80b.py --workdir gs://BUCKET/run \
        --config.train.init_from=$CKPT --config.data.tokenizer=$CKPT/hf_extras \
        --config.data.sources='[{"path": "gs://BUCKET/obelics/*.arrayrecord", "weight": 1.0},
                                {"path": "gs://BUCKET/pairs/*.arrayrecord", "weight": 0.2}]'

Documents (`mmjax.data.documents`) of up to 1024 tokens and 5 images of 224 px, as IDEFICS was
trained; sources mixed by weight as Flamingo's (1.0 / 0.2 / 0.2 / 0.03 over its four).

Checked with `mmjax aot --topology v5p-256` (128 chips, mesh fsdp=128, global batch 256 x 1024
tokens, 1280 images, splash attention, `dots` remat): per chip arguments 3.16 GiB, temporaries
41.71 GiB, total 45.06 of 95 GiB HBM; 79.97 B parameters, 14.05 B of them trained (the resampler,
the 20 gated layers and the 2 new rows).
"""

import ml_collections

OPENCLIP_VIT_H14 = dict(image_size=224, patch_size=14, hidden_size=1280, intermediate_size=5120,
                        num_layers=32, num_heads=16)
LLAMA_65B = dict(vocab_size=32000, hidden_size=8192, intermediate_size=22016, num_layers=80,
                 num_heads=64, rms_norm_eps=1e-6, rope=dict(theta=10000.0))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(family="idefics", vision=OPENCLIP_VIT_H14,
                 resampler=dict(num_latents=64, depth=6, num_heads=16, head_dim=96),
                 decoder=LLAMA_65B, cross_layer_interval=4, gate="float",
                 additional_vocab_size=2, image_token_id=32001, dtype="bfloat16",
                 param_dtype="float32", remat_policy="dots", attention_backend="splash")
  fake = "<fake_token_around_image>"
  c.data = dict(image_preset="idefics", image_overrides=dict(size=224), tokenizer="",
                image_token="<image>", image_start=fake, image_end=fake, max_length=1024,
                max_tiles=5, max_images=5, batch_size=256, num_workers=8, sources=())
  c.optim = dict(lr=1e-4, warmup_steps=2000, end_lr_ratio=0.0, b1=0.9, b2=0.999,
                 weight_decay=0.1, clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=1, fsdp=-1, tensor=1, rules="fsdp")
  c.train = dict(steps=100_000, trainable=("connector", "gated_cross", "additional_vocab"),
                 grad_accum=1, init_from="", log_every=10)
  c.checkpoint = dict(every_steps=1000, keep=2, async_save=True)
  return c
