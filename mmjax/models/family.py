"""A model family as a plug-in: everything the rest of mmjax asks about a family.

The trainer, `mmjax aot`, generation, metrics, conversion and the CLI hold a `Family` and call its
methods; none of them branches on a family's name or type. A family module under `mmjax/models/`
declares its `FAMILIES` and `mmjax/models/registry.py` lists the module (one line per module).
Conversion tables live in `mmjax/convert/tables/`, found by `Family.table` (a module name there):
nothing under `mmjax/models/` imports `mmjax/convert/`.

Methods a family does not support raise `Unsupported`, naming the family and what it lacks.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np


class Unsupported(ValueError):
  """What was asked of a family that it does not do (e.g. logits of a vision-only tower)."""


# Execution settings (not architecture) that a training config or `mmjax convert` sets on every
# part of a model config: compute dtype, parameter dtype, remat policy, attention kernel.
EXECUTION_KEYS = ("dtype", "param_dtype", "remat_policy", "attention_backend")


class Family:
  """Base class: a family module subclasses it and instantiates one object per family."""

  name: str = ""  # registry key, written to a checkpoint's mmjax.json
  hf_model_types: tuple[str, ...] = ()  # config.json `model_type`s this family reads
  config_cls: type = object
  module_cls: type = nn.Module
  table: str | None = None  # conversion table: module name under mmjax/convert/tables/
  # Top-level parameter subtrees in data-flow order: a frozen part still runs its backward pass
  # when a part before it trains (analytic FLOPs), and `train.trainable` names them.
  components: tuple[str, ...] = ("encoder", "connector", "decoder")
  # Finer trainable parts than components: name -> regex over '/'-joined parameter paths
  # (e.g. Llama 3.2 Vision's cross-attention layers inside the decoder).
  parts: Mapping[str, str] = {}
  # Scanned stacks that take their own execution settings (`remat_policy={'decoder': 'full'}`):
  # stack name -> field of the family config holding that stack's config.
  stacks: Mapping[str, str] = {"encoder": "vision", "decoder": "decoder"}
  # Processor arrays the family reads beside `input_ids`, `attention_mask` and `position_ids`.
  processor_keys: tuple[str, ...] = ()
  # Batch arrays the analytic FLOP count reads (gathered over hosts): see `train_flops`.
  flops_batch_keys: tuple[str, ...] = ()
  # Folders of processor files beside the weights that conversion keeps with the tokenizer
  # files (InstructBLIP's `qformer_tokenizer/`): chat mode reads them, export writes them back.
  hf_extra_dirs: tuple[str, ...] = ()

  def __repr__(self) -> str:
    return f"Family({self.name!r})"

  def _unsupported(self, what: str) -> Unsupported:
    return Unsupported(f"{what} is not supported for {self.name!r} checkpoints")

  # ---- configs ------------------------------------------------------------------------------

  def claims_hf(self, hf_config: Mapping[str, Any]) -> bool:
    """Whether this family reads a config.json that its top-level `model_type` alone does not
    single out (e.g. a `llava` whose `vision_config.model_type` is `pixtral`). Claims take
    precedence over `hf_model_types`; none by default."""
    return False

  def config_from_hf(self, hf_config: Mapping[str, Any], **execution) -> Any:
    """The family config from a transformers config.json dict; `execution` sets dtypes etc."""
    raise self._unsupported("reading a transformers config")

  def config_from_training(self, model: Mapping[str, Any]) -> Any:
    """The family config from a training config's `model` section (execution keys included)."""
    raise Unsupported(f"training configs cannot describe a {self.name!r} model; it trains from "
                      "a converted checkpoint (train.init_from)")

  def with_training_settings(self, config, model: Mapping[str, Any]) -> Any:
    """A converted checkpoint's config with the settings a training config's `model` section
    adds to it, those transformers' config does not hold (e.g. IDEFICS' `image_token_id`);
    unchanged by default."""
    return config

  def hf_config(self, config) -> dict[str, Any]:
    """The transformers config.json dict of this model (`config_from_hf` reads it back to
    `config`, execution settings aside): what `mmjax export` writes for a trained model."""
    to_hf = getattr(config, "to_hf", None)
    if to_hf is None:
      raise self._unsupported("writing a transformers config")
    try:
      return to_hf()
    except ValueError as e:  # a config transformers cannot express (e.g. a linear projector)
      raise Unsupported(f"{self.name!r} config has no transformers counterpart: {e}") from None

  def hf_processor_config(self, config, image_token: str) -> dict[str, Any]:
    """The transformers processor's own settings (`processor_config.json`: its class, LLaVA's
    patch size, ...) for images marked by `image_token`; none by default."""
    return {}

  def decoder_config(self, config) -> Any:
    """The language model's `DecoderConfig` (vocabulary, positions, cache shape)."""
    return config.decoder

  def text_vocab_size(self, config) -> int:
    """Token ids the model's text input takes (a tokenizer may not exceed it)."""
    return self.decoder_config(config).vocab_size

  def tied(self, config) -> bool:
    return bool(getattr(self.decoder_config(config), "tie_embeddings", False))

  # ---- the module ---------------------------------------------------------------------------

  def build(self, config) -> nn.Module:
    return self.module_cls(config)

  def example_inputs(self, config) -> tuple:
    """Positional inputs that `build(config).init` takes (small, every parameter created)."""
    raise NotImplementedError

  # ---- the public contract: transformers-processor arrays ------------------------------------

  def forward_from_hf_inputs(self, config, params, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """float32 logits `[B, T, V]` for the arrays the family's transformers processor makes."""
    raise self._unsupported("logits")

  def generation_adapter(self, config) -> Any:
    """The adapter `mmjax.generation` drives (`prepare_inputs`, `init_state`, `prefill`,
    `step`; see `mmjax.generation.adapters`)."""
    raise self._unsupported("generation")

  def example_processor_inputs(self, config, batch: int, length: int) -> dict[str, np.ndarray]:
    """Processor arrays of `batch` prompts of `length` tokens with one image each (zeros), as
    the family's transformers processor lays them out (for `mmjax aot --step generate`)."""
    raise self._unsupported("example inputs")

  def generation_pixels(self, config, inputs: Mapping[str, np.ndarray]) -> Any:
    """The `pixels` argument of the generation adapter from processor arrays."""
    raise self._unsupported("generation")

  # Image preprocessing options chat mode's `prompt_builder` takes as keyword arguments (the
  # `mmjax generate` flags of the same names, e.g. Qwen-VL's pixel budget `min_pixels`).
  chat_image_options: tuple[str, ...] = ()

  def prompt_builder(self, ckpt_dir: str, config, chat_template: bool = True,
                     **image_options) -> Any:
    """Chat mode's `builder(prompt, images) -> (input_ids [1, T], pixels)` from the tokenizer,
    chat template and processor settings a checkpoint keeps (`hf_extras/`), with `tokenizer`,
    `stop_ids` and `pad_id` attributes (see `mmjax.generation.prompt`); `images` are paths or
    http(s) URLs, `image_options` some of `chat_image_options`."""
    raise self._unsupported("chat mode")

  # ---- training -----------------------------------------------------------------------------

  def train_forward(self, module, params, batch: Mapping[str, jax.Array], rng=None,
                    head_loss=None) -> Any:
    """Logits `[B, T, V]` for a training batch (schema: `mmjax.data.pipeline`), or the result
    of `head_loss` (see `mmjax.decoders.llama.Decoder`); `rng` drives stochastic layers."""
    raise self._unsupported("training")

  def contrastive_forward(self, module, params, batch: Mapping[str, jax.Array], rng=None) -> Any:
    """Image-caption batches (`pixels`, `text_ids`, `text_mask`) -> the towers' normalised
    embeddings and learned scale / bias (`mmjax.models.dual_encoder.ContrastiveOutput`), for
    `train.objective` clip / siglip."""
    raise self._unsupported("contrastive training (train.objective clip / siglip)")

  def image_token_mask(self, config, batch: Mapping[str, jax.Array]) -> jax.Array:
    """`[B, T]` bool: the training batch's positions that hold image (or video) features in the
    decoder's input (where partial LoRA applies its update)."""
    raise self._unsupported("partial LoRA (image positions in the decoder's input)")

  def check_training_data(self, config, data, tokenizer) -> None:
    """ValueError, naming the setting, when the pipeline's `data` (`mmjax.data.DataConfig`) and
    `tokenizer` do not make batches this model reads (e.g. another image token); nothing is
    checked by default."""

  def stochastic_kwargs(self, module, rng) -> dict:
    """Extra arguments of the module's call that turn on stochastic layers (drop path) in
    training, with `rng`; none by default."""
    return {}

  def train_flops(self, config, params, batch: Mapping[str, Any], trainable,
                  attention=("decoder", "encoder")) -> float:
    """Analytic model FLOPs of one step on `batch` (arrays or shapes of the global batch:
    `input_ids` and the family's `flops_batch_keys`); see `mmjax.train.metrics`."""
    raise self._unsupported("FLOP counting")

  def aot_train_flops(self, config, params, batch: Mapping[str, Any], trainable,
                      attention=("decoder", "encoder")) -> float:
    """`train_flops` of an abstract batch (`mmjax aot`): every image slot counted as used."""
    filled = {k: np.ones(v.shape, np.int32) for k, v in batch.items()
              if k in self.flops_batch_keys}
    return self.train_flops(config, params, {**batch, **filled}, trainable, attention)

  def abstract_train_batch(self, config, data: Mapping[str, Any], sds) -> dict:
    """One global training batch as `sds(shape, dtype)` structs (for `mmjax aot`)."""
    raise self._unsupported("ahead-of-time compilation")

  def kernel_attention_stacks(self, config) -> tuple[str, ...]:
    """Stacks whose attention runs in a Pallas kernel (XLA counts those FLOPs as 0)."""
    stacks = {name: getattr(config, field, None) for name, field in self.stacks.items()}
    return tuple(name for name, c in stacks.items()
                 if c is not None and getattr(c, "attention_backend", "xla") != "xla")

  def tokens_per_image(self, config) -> int:
    """Placeholder tokens one image of the `shapes` data source takes."""
    raise self._unsupported("the shapes data source")

  def flop_depths(self, model: Mapping[str, Any]) -> dict[str, int]:
    """Depth of each scanned stack named in a training config's model section (for
    `mmjax aot --count-flops`, which extrapolates the FLOPs of shallow copies in depth)."""
    return {name: int(model[name]["num_layers"]) for name in ("vision", "decoder")
            if name in model and "num_layers" in model[name]}

  def with_depths(self, model: dict, depths: Mapping[str, int]) -> None:
    """Sets those stack depths in a model section (in place), cutting layer-index lists."""
    for name, depth in depths.items():
      stack = model[name]
      stack["num_layers"] = depth
      for key in list(stack.keys()):
        if key.endswith("_indexes"):  # e.g. Qwen2.5-VL's full-attention layers
          stack[key] = tuple(i for i in stack[key] if i < depth)

  # ---- parts --------------------------------------------------------------------------------

  def part_names(self) -> tuple[str, ...]:
    return (*self.components, *self.parts)
