"""Parameters of one mmjax module filled from a torch state dict through conversion rules, with
the converter's strict plan (every key used, every parameter filled): for parity tests of a part
(a vision tower, a connector) without a whole checkpoint."""

import flax.linen as nn
import jax
import numpy as np

from mmjax.convert.plan import chunk_of, flatten, make_plan
from mmjax.convert.rules import Layout, Rule


def load_params(model: nn.Module, args, state_dict, rules: list[Rule]) -> dict:
  """`model`'s parameter tree (its `init(*args)` shapes) from `state_dict` through `rules`."""
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["params"]
  shapes = {path: leaf.shape for path, leaf in flatten(nn.unbox(abstract)).items()}
  saved = {k: v.detach().numpy() for k, v in state_dict.items()}
  plan = make_plan(rules, shapes, saved, (Layout("v5"),), ())
  params: dict = {}
  for path, parts in plan.leaves.items():
    leaf = np.zeros(shapes[path], np.float32)
    for part in parts:
      array = chunk_of(saved[part.key], part.rule.chunk)
      dest = leaf if part.layer is None else leaf[part.layer]
      dest[...] = part.rule.transform.to_params(array, dest.shape)
    *parents, name = path.split("/")
    node = params
    for parent in parents:
      node = node.setdefault(parent, {})
    node[name] = leaf
  return params
