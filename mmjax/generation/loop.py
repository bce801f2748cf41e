"""Prefill + a jit-compiled decode loop over a preallocated KV cache.

Rows are left padded. Prompt positions come from the attention mask (`cumsum(mask) - 1`, as
transformers' `generate` computes them) or from the family (Qwen-VL's `[3, B, T]` M-RoPE ids),
and every new token takes the next position of its row: the prompt's last position + 1, then + 1
per token (on every M-RoPE axis), as transformers' `generate` extends `position_ids`.
The cache holds `T + N - 1` slots: the prompt, then each generated token but the last.
"""

import contextlib
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax import limits
from mmjax.generation import layer_views
from mmjax.generation.models import adapter_for
from mmjax.generation.sampling import Knobs, Sampling, next_token
from mmjax.nn.linear import matmul_dots
from mmjax.nn.masks import positions_from_attention_mask
from mmjax.nn.stack import unrolled_layers

TokenCallback = Callable[[int, np.ndarray, np.ndarray], None]  # (step, tokens [B], done [B])


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  """`max_new_tokens` per row; rows that emit a `stop_ids` token end there and are padded with
  `pad_id` (the stop token itself is kept, as transformers does)."""

  max_new_tokens: int
  sampling: Sampling = Sampling()
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0

  @property
  def static(self) -> "GenerateConfig":
    """What the compiled loop depends on: sampling values are passed as arrays (`Knobs`)."""
    return dataclasses.replace(self, sampling=Sampling(0.0 if self.sampling.greedy else 1.0))

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))


def _is_stop(tokens, stop_ids):
  if not stop_ids:
    return jnp.zeros(tokens.shape, bool)
  return jnp.isin(tokens, jnp.asarray(stop_ids, jnp.int32))


class Generator:
  """Compiles prefill and decode once per input shape.

  With a `mesh`, `params` are expected on it (see `mmjax.generation.partition.shard_params`) and
  prompt rows are split over its 'data' axis when they divide evenly. On one CPU device the
  decoder's layers run unrolled from per-layer weights and cache (`layer_views` says why).
  """

  def __init__(self, family, config, params, mesh: Mesh | None = None):
    self.model = adapter_for(family, config)
    self.config = config
    if mesh is None and any(isinstance(a, np.ndarray) for a in jax.tree.leaves(params)):
      # Once here: a numpy argument is copied to the device at every call (`load_checkpoint`
      # returns numpy; on the CPU that was ~0.5 s per prefill and per decode for 124M weights).
      params = jax.device_put(params)
    segments = getattr(self.model, "layer_segments", None)  # an adapter's own stacks, if any
    if segments is None:
      segments = layer_views.segment_names(family, config)
    self.per_layer = layer_views.applies(params, mesh, segments)
    self.params = layer_views.split_params(params, segments) if self.per_layer else params
    self.mesh = mesh
    self._prefill = jax.jit(self._prefill_fn, static_argnames=("gen",))
    self._decode = jax.jit(self._decode_fn, static_argnames=("gen", "on_token"))

  def _tracing(self) -> contextlib.AbstractContextManager:
    """What the compiled functions are traced under: on one CPU device, unrolled layers (so
    the per-layer arrays fold in) and dots as 2-D matrix products (`matmul_dots`)."""
    stack = contextlib.ExitStack()
    if self.per_layer:
      stack.enter_context(unrolled_layers())
      stack.enter_context(matmul_dots())
    return stack

  def _run(self, method, params, state, *args, **kwargs):
    """`self.model.prefill` or `.step` on per-layer parameters and state (when held so)."""
    if not self.per_layer:
      return method(params, *args, state=state, **kwargs)
    cache = layer_views.stack(state["cache"])
    logits, state = method(layer_views.stack(params), *args,
                           state={**state, "cache": cache}, **kwargs)
    return logits, {**state, "cache": layer_views.split(state["cache"])}

  # The three traced pieces below take `self.params` as they are held (per layer or stacked);
  # `mmjax.eval.loglik` builds on them too.

  def init_state(self, batch: int, length: int) -> dict:
    """The adapter's decoding state for `length` positions, in the layout `self.params` run in."""
    state = self.model.init_state(batch, length)
    if self.per_layer:
      state = {**state, "cache": layer_views.split(state["cache"])}
    return state

  def prefill_traced(self, params, input_ids, pixels, positions, mask, state):
    """The adapter's prefill, inside a traced function: (last logits [B, V], state)."""
    with self._tracing():
      return self._run(self.model.prefill, params, state, input_ids, pixels, positions, mask)

  def step_traced(self, params, tokens, positions, mask, state, index):
    """The adapter's one-token step, inside a traced function: (logits [B, V], state)."""
    with self._tracing():
      return self._run(self.model.step, params, state, tokens, positions, mask, index=index)

  def _prefill_fn(self, params, input_ids, mask, positions, pixels, rng, knobs, *,
                  gen: GenerateConfig):
    b, t = input_ids.shape
    n = gen.max_new_tokens
    if positions is None:
      positions = positions_from_attention_mask(mask)  # [B, T]
    full_mask = jnp.concatenate([mask, jnp.ones((b, n - 1), mask.dtype)], axis=1)  # [B, S]
    # The adapter's cache length (an encoder-decoder's decoder holds the new tokens only).
    cache_length = getattr(self.model, "cache_length", lambda t, n: t + n - 1)(t, n)
    logits, state = self.prefill_traced(params, input_ids, pixels, positions, full_mask,
                                        self.init_state(b, cache_length))
    rng, sub = jax.random.split(rng)
    token = next_token(logits, sub, knobs, gen.sampling.greedy)  # [B]
    out = jnp.full((b, n), gen.pad_id, jnp.int32).at[:, 0].set(token)
    return dict(step=jnp.int32(1), token=token, done=_is_stop(token, gen.stop_ids), out=out,
                state=state, mask=full_mask, position=positions[..., -1] + 1, index=jnp.int32(t),
                rng=rng, knobs=knobs)

  def _decode_fn(self, params, carry, *, gen: GenerateConfig, on_token: TokenCallback | None):
    n = gen.max_new_tokens

    def cond(c):
      return (c["step"] < n) & ~jnp.all(c["done"])

    def body(c):
      logits, state = self.step_traced(params, c["token"][:, None], c["position"][..., None],
                                       c["mask"], c["state"], c["index"])
      rng, sub = jax.random.split(c["rng"])
      token = next_token(logits, sub, c["knobs"], gen.sampling.greedy)
      token = jnp.where(c["done"], gen.pad_id, token)  # [B]
      done = c["done"] | _is_stop(token, gen.stop_ids)
      if on_token is not None:
        io_callback(on_token, None, c["step"], token, done, ordered=True)
      out = jax.lax.dynamic_update_slice(c["out"], token[:, None], (0, c["step"]))  # [B, N]
      return dict(step=c["step"] + 1, token=token, done=done, out=out, state=state, mask=c["mask"],
                  position=c["position"] + 1, index=c["index"] + 1, rng=rng, knobs=c["knobs"])

    return jax.lax.while_loop(cond, body, carry)["out"]

  def prefill(self, input_ids, attention_mask=None, pixels=None, *, gen: GenerateConfig,
              positions=None, rng=None) -> dict[str, Any]:
    """Runs the prompt; the returned carry holds the first token (`carry['token']`) and cache."""
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
      raise ValueError(f"input_ids must be [batch, length] with length >= 1, got {input_ids.shape}")
    # Ids in the vocabulary (checked before the cast could wrap them), and prompt + new tokens
    # within the model's positions, which also bounds the KV cache allocated below.
    limits.check_prompt(input_ids, self.config, gen.max_new_tokens)
    input_ids = input_ids.astype(np.int32)
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if mask.shape != input_ids.shape:
      raise ValueError(f"attention_mask {mask.shape} does not match input_ids {input_ids.shape}")
    # Decoder-only models continue every row from its last column; an encoder reads the prompt
    # whole (`needs_left_padding` False), padded on either side.
    if getattr(self.model, "needs_left_padding", True) and not np.all(mask[:, -1] == 1):
      raise ValueError("generation needs left-padded rows: the attention mask of every row must "
                       "end with 1 (pad on the left, as transformers' processors do with "
                       "padding_side='left')")
    pixels, positions = self.model.prepare_inputs(input_ids, mask, pixels, positions)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    if self.mesh is not None:
      input_ids, mask, positions, pixels = self._place(input_ids, mask, positions, pixels)
    return self._prefill(self.params, input_ids, mask, positions, pixels, rng,
                         Knobs.of(gen.sampling), gen=gen.static)

  def _place(self, input_ids, mask, positions, pixels):
    data = self.mesh.shape.get("data", 1)
    split = input_ids.shape[0] % data == 0
    rows = NamedSharding(self.mesh, P("data") if split else P())
    put = lambda a, sharding: None if a is None else jax.device_put(a, sharding)
    position_rows = rows if positions is None or positions.ndim == 2 else \
        NamedSharding(self.mesh, P(None, "data") if split else P())  # [3, B, T]
    return (put(input_ids, rows), put(mask, rows), put(positions, position_rows),
            put(pixels, NamedSharding(self.mesh, P())))

  def decode(self, carry, *, gen: GenerateConfig, on_token: TokenCallback | None = None):
    """The remaining tokens: returns ids `[B, N]` (first token included), stopped rows padded."""
    if on_token is not None:
      on_token(0, np.asarray(carry["token"]), np.asarray(carry["done"]))
    return self._decode(self.params, carry, gen=gen.static, on_token=on_token)

  def __call__(self, input_ids, attention_mask=None, pixels=None, *, gen: GenerateConfig,
               positions=None, rng=None, on_token: TokenCallback | None = None) -> np.ndarray:
    carry = self.prefill(input_ids, attention_mask, pixels, gen=gen, positions=positions, rng=rng)
    return np.asarray(self.decode(carry, gen=gen, on_token=on_token))


def generate(family, config, params, input_ids, attention_mask=None, pixels=None, *, mesh=None,
             max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             stop_ids=(), pad_id: int = 0, rng=None, on_token: TokenCallback | None = None):
  """Generated ids `[B, max_new_tokens]` for left-padded prompts.

  `pixels [I, H, W, C]` (NHWC) holds every image of the batch in row order; for the Qwen-VL
  families it is a dict of the processor's arrays (`pixel_values`, `image_grid_thw`,
  `pixel_values_videos`, `video_grid_thw`, `mm_token_type_ids`, `second_per_grid_ts`; see
  `mmjax.generation.models.QwenVLFusion`). Greedy at temperature 0 (the default).
  """
  gen = GenerateConfig(max_new_tokens, Sampling(temperature, top_k, top_p), tuple(stop_ids), pad_id)
  return Generator(family, config, params, mesh)(input_ids, attention_mask, pixels, gen=gen, rng=rng,
                                           on_token=on_token)
