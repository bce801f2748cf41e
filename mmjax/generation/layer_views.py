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

Every segment of the decoder (`mmjax.decoders.layout`: `layers`, `layers_1`, ..., plain stacks
or repeated groups with one subtree per slot) and every cache entry (self-attention keys/values,
cross-attention layers' image keys/values) is split leaf by leaf along its leading
`[repeats]` axis, whatever the tree above it.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.decoders.llama import layer_plan

DECODER = "decoder"  # every family keeps its language model's parameters here (`Family.stacks`)


@jax.tree_util.register_pytree_node_class
class Layers:
  """One stacked `[L, ...]` array held as its L layers' arrays `[...]` (a pytree node)."""

  def __init__(self, arrays):
    self.arrays = tuple(arrays)

  def __len__(self) -> int:
    return len(self.arrays)

  def tree_flatten(self):
    return self.arrays, None

  @classmethod
  def tree_unflatten(cls, _, arrays):
    return cls(arrays)


def segment_names(family, config) -> tuple[str, ...]:
  """The parameter subtrees of the family's decoder that hold stacked layers."""
  return tuple(segment.name for segment in layer_plan(family.decoder_config(config)))


def applies(params, mesh, segments: tuple[str, ...]) -> bool:
  """Whether decoding runs on one CPU device (no mesh, every parameter a jax array there) and
  the parameters hold the decoder's `segments`."""
  decoder = params.get(DECODER)
  if mesh is not None or not segments or not isinstance(decoder, dict) \
      or any(name not in decoder for name in segments):
    return False

  def on_one_cpu(leaf) -> bool:
    if not isinstance(leaf, jax.Array):  # numpy, or abstract values of ahead-of-time compiles
      return False
    devices = leaf.devices()
    return len(devices) == 1 and next(iter(devices)).platform == "cpu"

  return all(on_one_cpu(leaf) for leaf in jax.tree.leaves(params))


def split_params(params: dict, segments: tuple[str, ...]) -> dict:
  """`params` with every stacked array of the decoder's `segments` as `Layers`.

  On the CPU `jax.device_put` of a numpy view of a jax array's buffer takes it without a copy,
  so the per-layer arrays share the stacked ones' memory."""

  def views(stacked):
    host = np.asarray(stacked)  # the device buffer itself on the CPU
    return Layers(jax.device_put(host[i]) for i in range(host.shape[0]))

  decoder = params[DECODER]
  split_segments = {name: jax.tree.map(views, decoder[name]) for name in segments}
  return {**params, DECODER: {**decoder, **split_segments}}


def split(stacked: Any) -> Any:
  """Every array `[L, ...]` of a tree as `Layers` (traced: static slices)."""
  return jax.tree.map(lambda a: Layers(a[i] for i in range(a.shape[0])), stacked)


def stack(tree: Any) -> Any:
  """Inverse of `split` / `split_params` inside a traced function: every `Layers` back to one
  `[L, ...]` array, the module's stacked layout; other leaves pass as they are."""
  return jax.tree.map(lambda x: jnp.stack(x.arrays) if isinstance(x, Layers) else x, tree,
                      is_leaf=lambda x: isinstance(x, Layers))
