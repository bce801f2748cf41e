"""LoRA: low-rank updates `W + (alpha / r) A B` of chosen linear maps, everywhere or only at
image-token positions (XComposer2's partial LoRA).

Every linear map of mmjax is an `Einsum`, so LoRA is a flax method interceptor on
`Einsum.__call__` that adds `scale * einsum(einsum(x, A), B)` to its output, rather than a
parameter transform (the module reading `W + scale * A @ B`): the activation form also gives
partial LoRA, which no weight transform can (the update depends on the position), never
materialises `W_eff` or its full-size gradient, and leaves every layer class as it is. The
factors are created in the einsum's own scope (`lora_a`, `lora_b` beside `kernel`): scanned
stacks give them the leading `layers` axis, and their logical axes (the kernel's contracted and
output axes, the rank `lora_rank`) shard them by the existing rules; the rank spreads over
`fsdp` where the factor has no `embed` axis and the rank divides (`adapters.fit_shardings`).

Factors follow peft's LoRA: A `[in..., r]` Kaiming-uniform (bound 1/sqrt(fan_in), peft's
`init_lora_weights=True`) or normal with std 1/r (`"gaussian"`), B `[r, out...]` zeros, so the
model is unchanged at init; the scale is alpha / r.
"""

import contextlib
import contextvars
import dataclasses
import functools
import math
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.axes import LORA_RANK
from mmjax.nn.linear import Einsum, einsum

FACTORS = ("lora_a", "lora_b")
POSITIONS = ("all", "image")
INITS = ("kaiming", "gaussian")
# The component whose rows are the text stream: partial LoRA masks its einsums by position.
TEXT_COMPONENT = "decoder"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int
  alpha: float
  targets: tuple[str, ...]  # regexes over einsum paths, e.g. 'decoder/layers/attn/(q|k|v|o)'
  positions: str = "all"  # 'image': the update only at image-token positions of the decoder
  init: str = "kaiming"

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
    if not self.targets:
      raise ValueError("lora.targets names no einsum: give regexes over parameter paths such as "
                       "'decoder/layers/attn/(q|k|v|o)'")
    if self.positions not in POSITIONS:
      raise ValueError(f"lora.positions must be one of {POSITIONS}, got {self.positions!r}")
    if self.init not in INITS:
      raise ValueError(f"lora.init must be one of {INITS}, got {self.init!r}")
    for pattern in self.targets:
      try:
        re.compile(pattern)
      except re.error as e:
        raise ValueError(f"lora.targets: {pattern!r} is not a regex ({e})") from None

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @classmethod
  def from_section(cls, section: Mapping[str, Any] | None) -> "LoraConfig | None":
    """A training config's `lora` section; None when absent or `rank` is 0 (LoRA off)."""
    section = dict(section or {})
    if not int(section.get("rank", 0) or 0):
      return None
    targets = section.get("targets", ())
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    return cls(rank=int(section["rank"]), alpha=float(section.get("alpha", section["rank"])),
               targets=targets, positions=str(section.get("positions", "all")),
               init=str(section.get("init", "kaiming")))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where an einsum's letters go: its kernel's, the contracted ones, the output ones."""

  kernel: str
  contracted: str
  outputs: str

  @classmethod
  def of(cls, equation: str) -> "Layout":
    lhs, rest = equation.split(",")
    kernel, out = rest.split("->")
    return cls(kernel, "".join(c for c in kernel if c in lhs and c not in out),
               "".join(c for c in kernel if c in out))


@dataclasses.dataclass
class _Active:
  config: LoraConfig
  positions: jax.Array | None  # [B, T]: 1 where the decoder's update applies; None: everywhere
  layouts: dict[str, Layout]  # einsum path -> layout, recorded at init


_ACTIVE: contextvars.ContextVar[_Active | None] = contextvars.ContextVar("mmjax_lora",
                                                                          default=None)


@contextlib.contextmanager
def applied(config: LoraConfig | None, positions: jax.Array | None = None):
  """Modules initialised or applied inside create / apply the LoRA factors of `config` (nothing
  when None). `positions [B, T]` (partial LoRA): where the decoder's einsums get the update.
  Yields the recorder whose `layouts` an init fills (`merge` needs them)."""
  if config is None:
    yield None
    return
  if config.positions == "image" and positions is None:
    raise ValueError("lora.positions='image' needs the image-token positions of the batch")
  state = _Active(config, None if config.positions == "all" else positions, {})
  token = _ACTIVE.set(state)
  try:
    with nn.intercept_methods(_intercept):
      yield state
  finally:
    _ACTIVE.reset(token)


def _fresh_letters(used: str, n: int = 1) -> str:
  return "".join([c for c in "RZYXWVUSabcdefghijklmnoqrsuvwxyz" if c not in used][:n])


def _factor_a_init(init: str, rank: int):
  def kaiming(key, shape, dtype):  # peft: kaiming_uniform_(a=sqrt(5)) on [r, in]
    bound = 1 / math.sqrt(math.prod(shape[:-1]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return kaiming if init == "kaiming" else nn.initializers.normal(stddev=1 / rank)


def _intercept(next_fun, args, kwargs, context):
  module = context.module
  y = next_fun(*args, **kwargs)
  active = _ACTIVE.get()
  if active is None or not isinstance(module, Einsum) or context.method_name != "__call__":
    return y
  path = "/".join(module.path)
  if module.is_initializing():
    if not any(re.fullmatch(p, path) for p in active.config.targets):
      return y
    active.layouts[path] = Layout.of(module.equation)
  elif not module.has_variable("params", "lora_a"):
    return y
  cfg = active.config
  layout = Layout.of(module.equation)
  size = dict(zip(layout.kernel, module.shape))
  axis = dict(zip(layout.kernel, module.axes))
  a = module.param(
      "lora_a", nn.with_logical_partitioning(_factor_a_init(cfg.init, cfg.rank),
                                             (*(axis[c] for c in layout.contracted), LORA_RANK)),
      (*(size[c] for c in layout.contracted), cfg.rank), module.param_dtype)
  b = module.param(
      "lora_b", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             (LORA_RANK, *(axis[c] for c in layout.outputs))),
      (cfg.rank, *(size[c] for c in layout.outputs)), module.param_dtype)
  lhs, rest = module.equation.split(",")
  out = rest.split("->")[1]
  r = _fresh_letters(module.equation)
  tokens = "".join(c for c in lhs if c not in layout.contracted)  # e.g. 'BT' or '...'
  x = args[0].astype(module.dtype)
  h = einsum(f"{lhs},{layout.contracted}{r}->{tokens}{r}", x, a.astype(module.dtype))  # [B, T, r]
  if active.positions is not None and path.split("/")[0] == TEXT_COMPONENT:
    if h.shape[:-1] != active.positions.shape:
      raise ValueError(f"partial LoRA at {path}: inputs {x.shape} do not have the batch's "
                       f"[rows, length] {active.positions.shape}")
    h = h * active.positions[..., None].astype(h.dtype)
  update = _expand(f"{tokens}{r},{r}{layout.outputs}->{out}", h, b.astype(module.dtype))
  return y + (cfg.scale * update).astype(y.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _expand(equation: str, h: jax.Array, b: jax.Array) -> jax.Array:
  """`einsum(equation, h, b)`, the update `[B, T, out...]` from `h [B, T, r]`, that no remat
  policy saves: its gradients need only `h` and `b`, so its backward keeps those alone and the
  update is recomputed (r / in of the projection's FLOPs) where the layer's backward needs it.

  As a plain dot, `dots` remat (`jax.checkpoint_policies.checkpoint_dots`, the 7B presets')
  saved it per layer beside the base projection's output: as much activation memory again as
  the adapted projections' (the README's LoRA section has the measured figures).
  """
  return einsum(equation, h, b)


def _expand_fwd(equation, h, b):
  return _expand(equation, h, b), (h, b)


def _expand_bwd(equation, residuals, grad):
  return jax.vjp(functools.partial(einsum, equation), *residuals)[1](grad)


_expand.defvjp(_expand_fwd, _expand_bwd)


def partial_active() -> bool:
  """Whether modules traced now apply partial LoRA (the decoder then runs every layer on every
  position: its target-only last layer would see rows, not the batch's positions)."""
  active = _ACTIVE.get()
  return active is not None and active.positions is not None


def check_targets(config: LoraConfig, layouts: Mapping[str, Layout], paths: list[str]) -> None:
  """Every target pattern matched an einsum (`layouts`, from an init); `paths` (every einsum's
  or kernel's path) name the candidates in the error. Partial LoRA targets layers only."""
  for pattern in config.targets:
    if not any(re.fullmatch(pattern, p) for p in layouts):
      examples = ", ".join(sorted(paths)[:12])
      raise ValueError(f"lora.targets pattern {pattern!r} matches no linear layer; their paths "
                       f"look like: {examples}")
  if config.positions == "image":
    heads = [p for p in layouts if p.split("/")[0] == TEXT_COMPONENT and
             p.split("/")[1] in ("lm_head", "embed")]
    if heads:
      raise ValueError(f"lora.positions='image' updates decoder layers at image tokens; "
                       f"{heads} run at text positions (drop them from lora.targets)")


def is_factor(path: tuple[str, ...]) -> bool:
  return bool(path) and path[-1] in FACTORS


def _node(tree: dict, path: str) -> dict:
  for key in path.split("/"):
    tree = tree[key]
  return tree


def merge(params: dict, layouts: Mapping[str, Layout], config: LoraConfig) -> dict:
  """`params` with every LoRA'd kernel replaced by `W + scale * A B` (its dtype) and no factors:
  what transformers loads. Full LoRA only (partial LoRA is not a weight change)."""
  if config.positions != "all":
    raise ValueError("partial LoRA (lora.positions='image') cannot be merged into weights: the "
                     "update depends on the position")
  out = jax.tree.map(lambda x: x, params)  # a copy of the dict structure

  for path, layout in layouts.items():
    node = _node(out, path)
    a, b, kernel = node.pop("lora_a"), node.pop("lora_b"), node["kernel"]
    stacked = a.ndim - 1 - len(layout.contracted)  # leading layers axes of scanned stacks
    r, *lead = _fresh_letters(layout.kernel, 1 + stacked)
    lead = "".join(lead)
    delta = jnp.einsum(f"{lead}{layout.contracted}{r},{lead}{r}{layout.outputs}->"
                       f"{lead}{layout.kernel}", jnp.asarray(a, jnp.float32),
                       jnp.asarray(b, jnp.float32))
    node["kernel"] = (jnp.asarray(kernel, jnp.float32) + config.scale * delta).astype(kernel.dtype)
  return out


def _leaves_where(params: dict, keep_factors: bool) -> dict:
  """The leaves that are (or are not) LoRA factors, in their nested places; no empty branch."""
  def go(tree):
    kept = {}
    for key, node in tree.items():
      if isinstance(node, Mapping):
        sub = go(node)
        if sub:
          kept[key] = sub
      elif (key in FACTORS) == keep_factors:
        kept[key] = node
    return kept

  return go(params)


def adapter(params: dict) -> dict:
  """The LoRA factors alone, in their nested places."""
  return _leaves_where(params, keep_factors=True)


def without_factors(params: dict) -> dict:
  """Every parameter but the LoRA factors: what the model without LoRA reads."""
  return _leaves_where(params, keep_factors=False)
