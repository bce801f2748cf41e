"""Logical axis names.

Every parameter is created with names from this small vocabulary; `mmjax.sharding` maps them to
mesh axes with rule tables. Vision towers use their own names so that text and vision can be
sharded differently (a 300M ViT rarely wants the decoder's tensor parallelism).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Axes:
  """The logical axis names one tower uses for its parameters."""

  embed: str
  heads: str
  kv_heads: str
  head_dim: str
  mlp: str


TEXT_AXES = Axes(embed="embed", heads="heads", kv_heads="kv_heads", head_dim="head_dim", mlp="mlp")
VISION_AXES = Axes(
    embed="vit_embed", heads="vit_heads", kv_heads="vit_heads", head_dim="vit_head_dim", mlp="vit_mlp"
)

# The rank axis of LoRA factors (`mmjax.nn.lora`): the rules spread it over `fsdp` where the
# factor has no `embed` axis (B of q/k/v/gate/up, A of o/down), which would else be replicated.
LORA_RANK = "lora_rank"

# The leading axis of stacked layers' parameters (scanned stacks, stacked DeepStack mergers).
LAYERS = "layers"

# Activation axes, constrained at block boundaries.
BATCH = "activation_batch"
LENGTH = "activation_length"
EMBED = "activation_embed"
