"""How a decoder's layers of several kinds group into scanned segments.

A decoder with cross-attention layers among its self-attention layers (Llama 3.2 Vision: one every
fifth layer) scans a repeating *group* of layers, as MaxText scans "scannable blocks", so compile
time stays flat in depth. Llama-3.2-11B-Vision's 40 layers with cross-attention at 3, 8, ..., 38 are
one segment: the group (self, self, self, cross, self) eight times. Irregular layouts (tiny test
models) split into several segments, each a group repeated.

Parameters of a segment live under its name (`layers`, `layers_1`, ...) and, unless it is a plain
stack of self-attention layers, under one name per slot (`self_0`, `cross_3`, ...), each with a
leading `[repeats]` axis. A uniform decoder is one segment of one-layer groups: `layers/...` with `[L, ...]`, the
layout of a plain scanned stack. HF's flat `layers.{i}` maps onto (segment, repeat, slot) with
`Segment.hf_index`.
"""

import dataclasses

SELF = "self"
CROSS = "cross"


@dataclasses.dataclass(frozen=True)
class Segment:
  name: str  # parameter subtree name
  kinds: tuple[str, ...]  # the group's layer kinds, in order
  repeats: int
  start: int  # index of the segment's first layer in the whole stack

  @property
  def grouped(self) -> bool:
    """Whether the layers sit under slot names: all but a plain stack of self-attention
    layers (whose parameters keep a scanned stack's layout)."""
    return self.kinds != (SELF,)

  @property
  def slots(self) -> tuple[str, ...]:
    """Parameter names of the group's layers ('' for a plain stack)."""
    if not self.grouped:
      return ("",)
    return tuple(f"{kind}_{j}" for j, kind in enumerate(self.kinds))

  @property
  def num_layers(self) -> int:
    return len(self.kinds) * self.repeats

  def hf_index(self, repeat: int, slot: int) -> int:
    """The layer's index in HF's flat `layers.{i}` list."""
    return self.start + repeat * len(self.kinds) + slot


def _segment_name(index: int) -> str:
  return "layers" if index == 0 else f"layers_{index}"


def _period(kinds: tuple[str, ...]) -> int:
  """The shortest period that tiles `kinds` exactly."""
  n = len(kinds)
  return next(p for p in range(1, n + 1) if n % p == 0 and kinds == kinds[:p] * (n // p))


def plan_layers(num_layers: int, cross_layers: tuple[int, ...] = (),
                cross_kind: str = CROSS) -> tuple[Segment, ...]:
  """The segments of a stack of `num_layers` whose `cross_layers` are cross-attention layers
  (of kind `cross_kind`).

  One segment when the kinds repeat with a period that divides the depth (uniform stacks, the
  Llama 3.2 Vision checkpoints); otherwise the stack is cut after each cross-attention layer and
  equal consecutive chunks are merged into a repeated group.
  """
  cross = set(cross_layers)
  if any(not 0 <= i < num_layers for i in cross):
    raise ValueError(f"cross-attention layers {sorted(cross)} out of range for {num_layers} layers")
  kinds = tuple(cross_kind if i in cross else SELF for i in range(num_layers))
  if not kinds:
    return ()
  p = _period(kinds)
  if p < num_layers or not cross:
    return (Segment(_segment_name(0), kinds[:p], num_layers // p, 0),)
  chunks, start = [], 0
  for i, kind in enumerate(kinds):
    if kind != SELF or i == num_layers - 1:
      chunks.append(kinds[start:i + 1])
      start = i + 1
  segments: list[Segment] = []
  start = 0
  for chunk in chunks:
    kinds, repeats = (chunk, 1) if set(chunk) != {SELF} else ((SELF,), len(chunk))
    last = segments[-1] if segments else None
    if last is not None and last.kinds == kinds:
      segments[-1] = dataclasses.replace(last, repeats=last.repeats + repeats)
    else:
      segments.append(Segment(_segment_name(len(segments)), kinds, repeats, start))
    start += len(chunk)
  return tuple(segments)
