"""LLaVA-1.5-7B stage 1 (feature alignment): only the fresh mlp2x connector trains.

    mmjax convert --hf openai/clip-vit-large-patch14-336 --out $TOWER
    mmjax convert --hf lmsys/vicuna-7b-v1.5 --out $LLM
    mmjax train --config configs/llava/llava15_7b_stage1.py --workdir $RUN1 \
        --config.train.init_from=$TOWER,$LLM --config.data.tokenizer=$LLM/hf_extras \
        --config.data.sources='[{"path": "blip_laion_cc_sbu_558k.arrayrecord"}]'

The tower and the language model come from their converted checkpoints; the connector is
initialised randomly (the run reports which components it loaded). The model lands in
`$RUN1/model`, which stage 2 starts from. Recipe as in the LLaVA-1.5 paper: batch 256, lr 1e-3,
3% warmup, cosine, no weight decay, one epoch of LCS-558K (2180 steps).

The image placeholder is Vicuna's `<unk>` (id 0): placeholders are replaced by image features
before the decoder sees them, so the 32000-row vocabulary needs no new row (LLaVA's original code
uses an out-of-vocabulary -200 the same way).

Checked with `mmjax aot --topology v5p-64` (32 chips, mesh fsdp=32, global batch 256 x 2048
tokens, 256 images, splash attention, `dots` remat): per chip arguments 0.85 GiB, temporaries
46.23 GiB, total 47.13 of 95 GiB HBM (the frozen 7B decoder still runs its backward pass for the
connector's gradients).
"""

import ml_collections

CLIP_L_336 = dict(kind="clip", image_size=336, patch_size=14, hidden_size=1024,
                  intermediate_size=4096, num_layers=24, num_heads=16, activation="quick_gelu",
                  layer_norm_eps=1e-5)
VICUNA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                 num_heads=32, num_kv_heads=32, head_dim=128, rms_norm_eps=1e-5,
                 rope=dict(theta=10000.0), tie_embeddings=False)


def model(remat_policy: str = "dots", attention_backend: str = "splash") -> dict:
  return dict(family="llava", vision=CLIP_L_336,
              projector=dict(kind="mlp2x", activation="gelu", use_bias=True),
              decoder=VICUNA_7B, image_token_id=0, feature_layers=(-2,), feature_select="default",
              dtype="bfloat16", param_dtype="float32", remat_policy=remat_policy,
              attention_backend=attention_backend)


def data(batch_size: int, image_preset: str) -> dict:
  return dict(image_preset=image_preset, template="vicuna_v1", tokenizer="", image_token="<unk>",
              max_length=2048, max_tiles=1, max_images=1, batch_size=batch_size, packing=True,
              num_workers=8, sources=())


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model()
  c.data = data(batch_size=256, image_preset="clip336")  # resize + centre crop
  c.optim = dict(lr=1e-3, warmup_steps=65, end_lr_ratio=0.0, b1=0.9, b2=0.999, weight_decay=0.0,
                 clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=1, fsdp=-1, tensor=1, rules="fsdp")
  c.train = dict(steps=2180, trainable=("connector",), grad_accum=1, init_from="", log_every=10)
  c.checkpoint = dict(every_steps=500, keep=2, async_save=True)
  return c
