"""Training batches: the embedded shapes set, or the general grain pipeline (`mmjax.data`).

Both yield host-local numpy batches in the schema of `mmjax.data.pipeline` and expose
`get_state()` / `set_state()` so the iterator position checkpoints with the train state.
"""

from typing import Any, Iterator, Mapping

import grain
import jax
import numpy as np

from mmjax.data import synthetic
from mmjax.sharding import BATCH_AXES


class _ShapesRow:
  """Shapes sample -> one training row (right-padded, labels shifted, pixels normalised)."""

  def __init__(self, tokenizer, num_image_tokens: int, max_length: int, image_first: bool):
    self.tokenizer, self.num_image_tokens, self.max_length, self.image_first = (
        tokenizer, num_image_tokens, max_length, image_first)

  def __call__(self, sample: dict) -> dict[str, np.ndarray]:
    ex = synthetic.encode_example(sample, self.tokenizer, self.num_image_tokens, self.max_length,
                                  self.image_first)
    ids, mask = ex["input_ids"], ex["loss_mask"]
    real = (ids != synthetic.PAD_ID).astype(np.int32)
    return {
        "input_ids": ids,
        "labels": np.append(ids[1:], synthetic.PAD_ID).astype(np.int32),
        "loss_mask": np.append(mask[1:], 0).astype(np.float32),
        "attention_mask": real,
        "segment_ids": real,
        "positions": np.arange(len(ids), dtype=np.int32),
        "pixel_values": (ex["image"] - 0.5) / 0.5,  # [H, W, 3] in [-1, 1]
        "image_mask": np.ones((), bool),
    }


class CaptionRow:
  """Shapes sample -> one image-caption pair (contrastive objectives): the normalised image and
  its scene's caption (`synthetic.describe_scene`), right-padded to `max_length`."""

  def __init__(self, shapes: synthetic.ShapesConfig, tokenizer, max_length: int):
    self.shapes, self.tokenizer, self.max_length = shapes, tokenizer, max_length

  def __call__(self, sample: dict) -> dict[str, np.ndarray]:
    caption = synthetic.describe_scene(sample["objects"], self.shapes)
    ids, mask = synthetic.encode_caption(caption, self.tokenizer, self.max_length)
    image = np.asarray(sample["image"], np.float32) / 255.0
    return {"pixels": (image - 0.5) / 0.5, "text_ids": ids, "text_mask": mask}


def shapes_config(data: Mapping[str, Any]) -> synthetic.ShapesConfig:
  return synthetic.ShapesConfig(**dict(data.get("shapes", {}) or {}))


class ShapesIterator:
  """Endless, seeded, resumable batches of the procedural shapes set for this host: question-
  answer rows, or image-caption pairs with `captions`."""

  def __init__(self, data: Mapping[str, Any], num_image_tokens: int | None, seed: int,
               captions: bool = False):
    cfg = shapes_config(data)
    source = synthetic.ShapesDataset(cfg, split="train", size=int(data.get("train_size", 100_000)))
    batch = int(data["batch_size"])
    if batch % jax.process_count():
      raise ValueError(f"data.batch_size {batch} does not divide over {jax.process_count()} hosts")
    if captions:
      row = CaptionRow(cfg, synthetic.load_tokenizer(), int(data["max_length"]))
    else:
      row = _ShapesRow(synthetic.load_tokenizer(), num_image_tokens, int(data["max_length"]),
                       bool(data.get("image_first", True)))
    ds = (grain.MapDataset.source(source)[jax.process_index()::jax.process_count()]
          .shuffle(seed=seed).repeat().map(row).batch(batch // jax.process_count()))
    self._it = iter(ds.to_iter_dataset())

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    return next(self._it)

  def get_state(self) -> dict:
    return self._it.get_state()

  def set_state(self, state: dict) -> None:
    self._it.set_state(state)


def make_train_iterator(data: Mapping[str, Any], model_config, seed: int, preference=None,
                        contrastive=None):
  """`data.source='shapes'` (the embedded default) or the general pipeline over `data.sources`
  (JSON / ArrayRecord / TFDS); without `source`, the pipeline when `sources` are given.
  `preference` (`mmjax.train.preference.PreferenceConfig`): pairs from the pipeline;
  `contrastive` (`mmjax.train.contrastive.ContrastiveConfig`): image-caption pairs."""
  from mmjax.models.registry import family_of_config

  family = family_of_config(model_config)
  data = dict(data)
  source = data.pop("source", "pipeline" if data.get("sources") else "shapes")
  if contrastive is not None:
    if source == "shapes":
      return ShapesIterator(data, None, seed, captions=True)
    data["captions"] = True
  if data.get("pairs") and preference is None:
    raise ValueError("data.pairs makes batches of preference pairs, which train.objective='lm' "
                     "does not train on: set train.objective='dpo' or 'mpo'")
  if preference is not None:
    if source != "pipeline":
      raise ValueError(f"train.objective={preference.objective!r} trains on preference pairs: "
                       "give them as data.sources (JSON / JSONL, see mmjax.data.pairs)")
    data.update(pairs=True, reference_columns=not preference.needs_reference_model)
  if source == "shapes":
    return ShapesIterator(data, family.tokens_per_image(model_config), seed)
  if source != "pipeline":
    raise ValueError(f"data.source must be 'shapes' or 'pipeline', got {source!r}")
  from mmjax.data import pipeline  # the general pipeline (JSON / ArrayRecord / TFDS sources)

  config = pipeline.DataConfig.from_dict(data)
  if not config.sources:
    raise ValueError("data.sources is empty: give the datasets to train on, e.g. "
                     "--config.data.sources='[{\"path\": \"train.json\", \"image_root\": \"images\"}]'")
  from mmjax.data.tokenizer import Tokenizer

  tokenizer = Tokenizer.load(config.tokenizer)
  vocab = family.text_vocab_size(model_config)
  if tokenizer.vocab_size > vocab:  # ids past the embedding table would gather garbage (NaN)
    raise ValueError(f"the tokenizer {config.tokenizer} has {tokenizer.vocab_size} tokens but the "
                     f"model's text vocabulary has {vocab}")
  family.check_training_data(model_config, config, tokenizer)
  return pipeline.make_iterator(config, tokenizer)


def to_global(batch: Mapping[str, np.ndarray], mesh) -> dict:
  """Host-local arrays -> global `jax.Array`s, leading axis over the mesh's batch axes."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(BATCH_AXES))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
