"""The generation adapter of a model family (`Family.generation_adapter`; see `adapters`)."""

from mmjax.generation.adapters import DecodeState, EmbeddingFusion  # noqa: F401 (re-exported)


def adapter_for(family, config):
  """The adapter the decode loop drives for this family's model."""
  return family.generation_adapter(config)
