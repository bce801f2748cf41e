"""Embedding fusion: image features replace the embeddings of image-placeholder tokens."""

import jax
import jax.numpy as jnp
import numpy as np


class PlaceholderMismatchError(ValueError):
  """The number of image-placeholder tokens differs from the number of image features."""


def check_placeholders(input_ids, image_token_id: int, num_features: int) -> None:
  """Raises when the placeholders in `input_ids` cannot take exactly `num_features` features.

  Only concrete arrays can be counted; under `jit` the data pipeline guarantees the counts.
  """
  if isinstance(input_ids, jax.core.Tracer):
    return
  count = int(np.sum(np.asarray(input_ids) == image_token_id))
  if count != num_features:
    raise PlaceholderMismatchError(
        f"image placeholders and image features do not match: the input ids hold {count} "
        f"placeholder tokens (id {image_token_id}) but the images give {num_features} features")


def merge_image_features(
    embeddings: jax.Array, is_placeholder: jax.Array, features: jax.Array,
    feature_valid: jax.Array | None = None,
) -> jax.Array:
  """Scatters `features [F, D]`, in order, into the placeholder slots of `embeddings [B, T, D]`.

  Slots are filled in row-major order, as torch's `masked_scatter` does, so several images per
  row and text-only rows need no special handling. `feature_valid [F]` drops features of padding
  image slots (fixed-shape training batches) before they are placed.
  """
  if feature_valid is not None:
    order = jnp.nonzero(feature_valid, size=features.shape[0], fill_value=0)[0]
    features = features[order]  # valid features first, in order
  b, t, d = embeddings.shape
  flat_mask = is_placeholder.reshape(-1)  # [B*T]
  index = jnp.clip(jnp.cumsum(flat_mask) - 1, 0, max(features.shape[0] - 1, 0))
  gathered = features.astype(embeddings.dtype)[index]  # [B*T, D]
  merged = jnp.where(flat_mask[:, None], gathered, embeddings.reshape(-1, d))
  return merged.reshape(b, t, d)
