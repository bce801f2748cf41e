"""T5 / Flan-T5 configuration, read from and written back to transformers' `T5Config`.

transformers 5 always ties T5's LM head to the shared embedding in its config
(`tie_word_embeddings` is forced true) and keeps the old meaning of the flag in
`scale_decoder_outputs` (decoder output times `d_model ** -0.5` before the head, as original
T5 does); an untied head (Flan-T5, T5 v1.1) is one whose `lm_head.weight` the checkpoint holds
with other values. The conversion table reads that from the weights (`read_hf_dir`) and writes
`tie_word_embeddings` accordingly, which older transformers read the same way.
"""

import dataclasses
from typing import Any, Mapping

from mmjax.nn.activations import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class T5Config:
  """An encoder-decoder T5: pre-norm blocks with T5's RMS norm (no mean, no bias), unscaled
  attention with a relative position bias per stack, a ReLU or gated-GELU feed-forward."""

  vocab_size: int
  hidden_size: int  # d_model
  intermediate_size: int  # d_ff
  num_heads: int
  head_dim: int  # d_kv (num_heads * head_dim need not be d_model)
  num_encoder_layers: int
  num_layers: int  # decoder layers
  num_buckets: int = 32
  max_distance: int = 128
  layer_norm_eps: float = 1e-6
  activation: str = "relu"  # "gelu_new" for "gated-gelu"
  gated: bool = False  # wi_0 (activated) * wi_1, as T5 v1.1 / Flan-T5
  tie_embeddings: bool = True  # the LM head is the shared embedding
  scale_decoder_outputs: bool = True  # decoder output * hidden_size ** -0.5 before the head
  decoder_start_token_id: int = 0
  model_type: str = "t5"
  # Execution (not architecture).
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  attention_backend: str = "xla"

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"T5 feed-forward activation {self.activation!r} is not supported; "
                       f"known: {sorted(ACTIVATIONS)}")

  @property
  def embed_width(self) -> int:
    return self.hidden_size

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "T5Config":
    proj = cfg.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
      raise ValueError(f"feed_forward_proj {proj!r} is not 'ACT' or 'gated-ACT'")
    activation = "gelu_new" if proj == "gated-gelu" else parts[-1]
    tie = cfg.get("tie_word_embeddings", True) is not False
    scale = cfg.get("scale_decoder_outputs")
    layers = cfg.get("num_layers", 6)
    decoder_layers = cfg.get("num_decoder_layers")
    start = cfg.get("decoder_start_token_id")
    return cls(
        vocab_size=cfg.get("vocab_size", 32128), hidden_size=cfg.get("d_model", 512),
        intermediate_size=cfg.get("d_ff", 2048), num_heads=cfg.get("num_heads", 8),
        head_dim=cfg.get("d_kv", 64), num_encoder_layers=layers,
        num_layers=layers if decoder_layers is None else decoder_layers,
        num_buckets=cfg.get("relative_attention_num_buckets", 32),
        max_distance=cfg.get("relative_attention_max_distance", 128),
        layer_norm_eps=cfg.get("layer_norm_epsilon", 1e-6), activation=activation,
        gated=len(parts) == 2, tie_embeddings=tie,
        scale_decoder_outputs=tie if scale is None else bool(scale),
        decoder_start_token_id=int(cfg.get("pad_token_id") or 0) if start is None else int(start),
        **execution)

  def to_hf(self) -> dict[str, Any]:
    """transformers' `T5Config` dict (`from_hf` reads it back)."""
    if self.gated:
      proj = "gated-gelu" if self.activation == "gelu_new" else f"gated-{self.activation}"
    else:
      proj = self.activation
    return dict(
        model_type="t5", architectures=["T5ForConditionalGeneration"], is_encoder_decoder=True,
        vocab_size=self.vocab_size, d_model=self.hidden_size, d_ff=self.intermediate_size,
        num_heads=self.num_heads, d_kv=self.head_dim, num_layers=self.num_encoder_layers,
        num_decoder_layers=self.num_layers, relative_attention_num_buckets=self.num_buckets,
        relative_attention_max_distance=self.max_distance,
        layer_norm_epsilon=self.layer_norm_eps, feed_forward_proj=proj,
        tie_word_embeddings=self.tie_embeddings,
        scale_decoder_outputs=self.scale_decoder_outputs,
        decoder_start_token_id=self.decoder_start_token_id)
