"""MiniGPT-4 (Vicuna-7B) as a composition: a converted BLIP-2's EVA ViT-g/14 and Q-Former (with
its 32 query tokens), a fresh Linear into Vicuna (`connector/projection`, MiniGPT-4's
`llama_proj`) and a converted Vicuna-7B; only the projection trains.

    mmjax convert --hf Salesforce/blip2-opt-2.7b --out $BLIP2
    mmjax convert --hf lmsys/vicuna-7b-v1.5 --out $VICUNA      # MiniGPT-4 v1 used Vicuna v0
    mmjax train --config configs/minigpt4/minigpt4_vicuna7b.py --workdir $RUN \
        --config.train.init_from="$BLIP2:encoder,connector/qformer;$VICUNA:decoder" \
        --config.data.tokenizer=$VICUNA/hf_extras \
        --config.data.sources='[{"path": "cc_sbu_align.json", "image_root": "image"}]'

`init_from` takes the BLIP-2 tower and Q-Former only (its OPT and its projection are not read)
and the Vicuna decoder; the projection starts random (reported). To start from the original
release's projection instead, import it and add it as a third source:

    mmjax minigpt4-projection --pth prerained_minigpt4_7b.pth --out $PROJ
    --config.train.init_from="$BLIP2:encoder,connector/qformer;$VICUNA:decoder;$PROJ:connector/projection"

(`mmjax minigpt4-projection --checkpoint $RUN/model` writes it into a finished run's model
instead.) A stage-1 Q-Former (`blip-2-retrieval`, e.g. `Salesforce/blip2-itm-vit-g`) works as
well: `$ITM:encoder,qformer=connector/qformer,-qformer/word_embed,-qformer/pos_embed,-qformer/*/ffn_text`.

Prompts follow the `minigpt4` template, for training and for generation:
`###Human: <Img><ImageHere></Img> {prompt} ###Assistant: ` with the answer closed by `###`;
`<ImageHere>` is the data's `<image>` placeholder, which becomes the 32 image tokens (Vicuna's
`<unk>`, id 0, whose embeddings the projected queries replace, as LLaVA's recipes do). The
release's second stage: 3500 image-description pairs, batch 12, lr 3e-5 warmup then cosine.
The Q-Former is frozen (no dropout, as MiniGPT-4 runs it in eval mode).
"""

import ml_collections

EVA_VIT_G = dict(kind="blip2", image_size=224, patch_size=14, hidden_size=1408,
                 intermediate_size=6144, num_layers=39, num_heads=16, activation="gelu",
                 layer_norm_eps=1e-6, qkv_bias=True)
QFORMER_BASE = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                    num_queries=32, cross_attention_frequency=2, activation="gelu",
                    layer_norm_eps=1e-12, dropout=0.0)
VICUNA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                 num_heads=32, num_kv_heads=32, head_dim=128, rms_norm_eps=1e-5,
                 rope=dict(theta=10000.0), tie_embeddings=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(family="blip-2", vision=EVA_VIT_G, qformer=QFORMER_BASE, decoder=VICUNA_7B,
                 image_token_id=0, dtype="bfloat16", param_dtype="float32", remat_policy="dots")
  c.data = dict(image_preset="blip2", template="minigpt4", tokenizer="", image_token="<unk>",
                max_length=256, max_tiles=1, max_images=1, batch_size=12, packing=False,
                num_workers=4, sources=())
  c.optim = dict(lr=3e-5, warmup_steps=200, end_lr_ratio=0.33, b1=0.9, b2=0.999,
                 weight_decay=0.05, clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=1, fsdp=-1, tensor=1, rules="fsdp")
  c.train = dict(steps=400, trainable=("projection",), grad_accum=1, init_from="", log_every=10)
  c.checkpoint = dict(every_steps=200, keep=2, async_save=True)
  return c
