"""InternVL2.5-8B (InternViT-300M-448px-V2_5 + InternLM2.5-7B-chat) supervised fine-tuning, with the freeze options of InternVL's own scripts.

    mmjax convert --hf OpenGVLab/InternVL2_5-8B --out $CKPT --dtype bfloat16   # the original release layout
    mmjax train --config configs/internvl/internvl25_8b_sft.py --workdir gs://BUCKET/run \
        --config.train.init_from=$CKPT --config.data.tokenizer=$CKPT/hf_extras \
        --config.data.sources='[{"path": "gs://BUCKET/sft/*.arrayrecord"}]'

The architecture comes from the converted checkpoint (`train.init_from`); `model.*` here only
sets execution. `get_config(FREEZE)` picks what trains, as InternVL's `freeze_backbone` /
`freeze_mlp` / `freeze_llm` flags do (backbone = `encoder`, mlp = `connector`, llm = `decoder`):

    sft (default)  backbone frozen; mlp and llm train (InternVL's fine-tuning recipe)
    mlp            only the mlp trains (InternVL's pre-training stage)
    full           everything trains
    backbone_mlp   llm frozen

Images: dynamic tiling into 448-px tiles, 1-12 tiles plus a thumbnail, 256 tokens per tile.
"""

import ml_collections

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
  c.model = dict(family="internvl", dtype="bfloat16", param_dtype="float32", remat_policy="dots",
                 attention_backend="xla")
  c.data = dict(image_preset="internvl", image_overrides=dict(size=448, patch_size=14,
                                                               min_tiles=1, max_tiles=12),
                template="internvl", tokenizer="", image_token="<IMG_CONTEXT>",
                image_start="<img>", image_end="</img>", max_length=8192,
                max_tiles=26, max_images=2, batch_size=128, packing=True,
                num_workers=4, sources=())
  c.optim = dict(lr=2e-5, warmup_steps=100, end_lr_ratio=0.0, b1=0.9, b2=0.999,
                 weight_decay=0.05, clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=1, fsdp=-1, tensor=1, rules="fsdp")
  c.train = dict(steps=5000, trainable=TRAINABLE[freeze], grad_accum=1, init_from="",
                 log_every=10)
  c.checkpoint = dict(every_steps=500, keep=2, async_save=True)
  return c
