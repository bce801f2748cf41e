"""BLIP-2 stage 2 with OPT-6.7B (vision-to-language generative pre-training): stage 1's EVA
ViT-g/14 and Q-Former before a frozen OPT-6.7B; the Q-Former (with its 32 query tokens) and a
fresh `language_projection` train on the captions' language-modelling loss.

    mmjax convert --hf facebook/opt-6.7b --out $OPT
    mmjax train --config configs/blip2/blip2_opt_6.7b_stage2.py --workdir gs://BUCKET/run \
        --config.train.init_from="$RUN1/model:encoder,qformer=connector/qformer,-qformer/word_embed,-qformer/pos_embed,-qformer/*/ffn_text;$OPT:decoder" \
        --config.data.tokenizer=$TOKENIZER \
        --config.data.sources='[{"path": "gs://BUCKET/captions/*.arrayrecord"}]'

`$RUN1` is a stage-1 run (`train.objective=blip2_stage1`, the `blip-2-retrieval` family) with
this file's `vision` and `qformer` (plus the Q-Former's BERT text fields): its tower goes in as
is, its Q-Former into the connector with what stage 2 has no place for dropped by name (the
BERT word / position embeddings and the text rows' feed-forwards); its ITC / ITM / ITG heads
are not taken. The tokenizer is OPT's with `<image>` added as id 50265 (the first unused row of
OPT's 50272; the hf_extras of a converted `Salesforce/blip2-opt-6.7b`), `Blip2Processor`'s image
token, whose 32 slots the projected queries fill; captions follow the `plain` template
(`<image>caption\\n`, the caption supervised). Recipe as the BLIP-2 paper's second stage: batch
1920, AdamW lr 1e-4 with 2000 warmup steps and cosine decay, weight decay 0.05, 80k steps; 224 px
images.

Checked with `mmjax aot --topology v5p-64` (32 chips, mesh fsdp=32, global batch 1920 x 80
tokens, 1920 images of 224 px, `dots` remat, XLA attention): per chip arguments 1.40 GiB,
temporaries 37.93 GiB, total 39.46 of 95 GiB HBM; 7.75 B parameters, 0.11 B trained (the
frozen ViT-g runs forward only; the frozen OPT still runs its backward pass for the connector's
gradients).
"""

import ml_collections

# EVA ViT-g/14 as BLIP-2 releases it (transformers' Blip2VisionConfig defaults).
EVA_VIT_G = dict(kind="blip2", image_size=224, patch_size=14, hidden_size=1408,
                 intermediate_size=6144, num_layers=39, num_heads=16, activation="gelu",
                 layer_norm_eps=1e-6, qkv_bias=True)
# BERT-base, cross-attention every 2nd layer, 32 queries (Blip2QFormerConfig defaults).
QFORMER_BASE = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                    num_queries=32, cross_attention_frequency=2, activation="gelu",
                    layer_norm_eps=1e-12, dropout=0.1)
# facebook/opt-6.7b (its OPTConfig as DecoderConfig.from_hf reads it).
OPT_6_7B = dict(vocab_size=50272, hidden_size=4096, intermediate_size=16384, num_layers=32,
                num_heads=32, num_kv_heads=32, head_dim=128, rms_norm_eps=1e-5, activation="relu",
                qkv_bias=True, o_bias=True, mlp_bias=True, norm="layer", mlp="dense",
                tie_embeddings=True, model_type="opt", learned_positions=2048 + 2,
                position_offset=2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(family="blip-2", vision=EVA_VIT_G, qformer=QFORMER_BASE, decoder=OPT_6_7B,
                 image_token_id=50265, dtype="bfloat16", param_dtype="float32",
                 remat_policy="dots")
  # 32 image tokens + BOS + a caption of up to 45 tokens + "\n" + EOS.
  c.data = dict(image_preset="blip2", template="plain", tokenizer="", image_token="<image>",
                max_length=80, max_tiles=1, max_images=1, batch_size=1920, packing=False,
                num_workers=8, sources=())
  c.optim = dict(lr=1e-4, warmup_steps=2000, end_lr_ratio=0.05, b1=0.9, b2=0.999,
                 weight_decay=0.05, clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=1, fsdp=-1, tensor=1, rules="fsdp")
  c.train = dict(steps=80_000, trainable=("connector",), grad_accum=1, init_from="",
                 log_every=50)
  c.checkpoint = dict(every_steps=2000, keep=2, async_save=True)
  return c
