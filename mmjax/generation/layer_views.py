"""Decoding on one CPU device: each decoder layer's weights and KV cache held as its own array.

A scanned (or unrolled) layer stack slices each layer's weights out of the stacked `[L, ...]`
arrays, and XLA:CPU makes every slice a copy; inside the decode loop that is every token, so a
step read the decoder's weights twice and wrote them once (the 124M LLaVA of
`tools/bench/generate.py`: 2/3 of the decode time in copies). Here the `Generator` holds each
layer's weights apart, as views of the stacked arrays (no copy on the CPU), and its compiled
functions stack them back where the module reads them, with the layers unrolled: XLA folds each
`slice(concatenate(...))` into the layer's own array, so the dots read the weights in place.
The cache is carried per layer the same way, so a step writes one token's keys and values in
place instead of rebuilding the stacked cache.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LAYERS = ("decoder", "layers")  # where every family keeps its decoder's stacked layer weights


def applies(params, mesh) -> bool:
  """Whether decoding runs on one CPU device (no mesh, every parameter a jax array there) and
  the parameters keep their decoder's layers where `LAYERS` says."""
  if mesh is not None or not isinstance(params.get(LAYERS[0]), dict) \
      or LAYERS[1] not in params[LAYERS[0]]:
    return False

  def on_one_cpu(leaf) -> bool:
    if not isinstance(leaf, jax.Array):  # numpy, or abstract values of ahead-of-time compiles
      return False
    devices = leaf.devices()
    return len(devices) == 1 and next(iter(devices)).platform == "cpu"

  return all(on_one_cpu(leaf) for leaf in jax.tree.leaves(params))


def split_params(params: dict) -> dict:
  """`params` with the decoder's stacked layer weights as a tuple of per-layer trees.

  On the CPU `jax.device_put` of a numpy view of a jax array's buffer takes it without a copy,
  so the per-layer arrays share the stacked ones' memory."""
  decoder = params[LAYERS[0]]
  layers = jax.tree.map(np.asarray, decoder[LAYERS[1]])
  count = jax.tree.leaves(layers)[0].shape[0]
  per_layer = tuple(jax.device_put(jax.tree.map(lambda a, i=i: a[i], layers))
                    for i in range(count))
  return {**params, LAYERS[0]: {**decoder, LAYERS[1]: per_layer}}


def stack_params(params: dict) -> dict:
  """Inverse of `split_params` inside a traced function: the module's stacked layout."""
  decoder = params[LAYERS[0]]
  if not isinstance(decoder[LAYERS[1]], tuple):
    return params
  return {**params, LAYERS[0]: {**decoder, LAYERS[1]: stack(decoder[LAYERS[1]])}}


def stack(per_layer: tuple) -> Any:
  """A tuple of per-layer trees -> one tree of `[L, ...]` arrays."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_layer)


def split(stacked: Any) -> tuple:
  """A tree of `[L, ...]` arrays -> a tuple of per-layer trees (traced: static slices)."""
  count = jax.tree.leaves(stacked)[0].shape[0]
  return tuple(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(count))
