"""`train.init_from`: which parameters of which converted checkpoints start a training run.

A source is a converted checkpoint (`mmjax convert`, or a finished run's `DIR/model`) and,
optionally, a selection of what to take from it:

  PATH                        every top-level component of PATH, each under its own name
  PATH:SEL                    only what SEL names (the first ':' not followed by '//', so
                              `gs://bucket/ckpt:encoder` reads)
  {"path": PATH, "take": ..., "drop": [...]}   the same as a dict

SEL is comma-separated items:

  NAME            take NAME (a component, or a '/'-joined subtree such as `connector/qformer`)
                  into the same place of the new model
  NAME=TARGET     take NAME into TARGET (e.g. stage 1's `qformer=connector/qformer`)
  -PATTERN        drop the source leaves under a path matching PATTERN (fnmatch over
                  '/'-joined source paths, `*` crossing '/': `-qformer/*/ffn_text`)

`train.init_from` is one source, a list of them, or a string: sources separated by ';'
(`"STAGE1:encoder,qformer=connector/qformer;OPT:decoder"`), or, without ';' or any selection,
by ',' (`"TOWER,LLM"`). A dict's `take` is a SEL string without drops, a list of names or a
`{NAME: TARGET}` dict; its `drop` a list of patterns.

Loading is strict: what a source gives must be exactly the target's leaves with the target's
shapes. A target leaf the source lacks, a shape that differs, or a source leaf the target lacks
is an error naming it; a source leaf the new model has no place for (stage 1's Q-Former text
embeddings before a stage-2 Q-Former) is loaded only when a `-PATTERN` drops it by name, and
the report names what was dropped. A drop that matches nothing, a name the source does not
hold, and two sources for one place are errors too.
"""

import dataclasses
import fnmatch
import re
from typing import Any, Mapping
Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class InitSource:
  path: str
  # (source subtree, target subtree); () takes every top-level component under its own name.
  take: tuple[tuple[Path, Path], ...] = ()
  drop: tuple[str, ...] = ()  # fnmatch patterns over '/'-joined source paths

  @property
  def whole(self) -> bool:
    """Every component as it is (the checkpoint can then describe the model)."""
    return not self.take and not self.drop


# The first ':' that is not a URL's '://'.
_SELECTOR = re.compile(r"^(?P<path>.*?):(?!//)(?P<sel>.*)$")


def _split(name: str, what: str) -> Path:
  parts = tuple(p for p in name.strip().split("/"))
  if not name.strip() or not all(parts):
    raise ValueError(f"train.init_from: {what} {name!r} is not a '/'-joined parameter path")
  return parts


def _item(src: str, dst: str | None, where: str) -> tuple[Path, Path]:
  return _split(src, f"{where}: name"), _split(dst if dst is not None else src,
                                                 f"{where}: target")


def _parse_selection(path: str, selection: str) -> InitSource:
  take, drop = [], []
  for item in selection.split(","):
    item = item.strip()
    if not item:
      continue
    if item.startswith("-"):
      drop.append(item[1:].strip())
      continue
    src, _, dst = item.partition("=")
    take.append(_item(src, dst if "=" in item else None, path))
  return _checked(InitSource(path, tuple(take), tuple(drop)))


def _checked(source: InitSource) -> InitSource:
  if not source.path:
    raise ValueError("train.init_from: a source without a checkpoint path")
  if not source.take and source.drop:
    raise ValueError(f"train.init_from: {source.path}: drops {list(source.drop)} without names "
                     "to take (e.g. 'encoder,qformer=connector/qformer,-qformer/word_embed')")
  if any(not p for p in source.drop):
    raise ValueError(f"train.init_from: {source.path}: an empty drop pattern")
  return source


def _from_string(text: str) -> InitSource:
  m = _SELECTOR.match(text.strip())
  if m is None:
    return _checked(InitSource(text.strip()))
  return _parse_selection(m["path"].strip(), m["sel"])


def _from_mapping(entry: Mapping[str, Any]) -> InitSource:
  unknown = set(entry) - {"path", "take", "drop"}
  if unknown or "path" not in entry:
    raise ValueError(f"train.init_from: a dict source has 'path' and optionally 'take' and "
                     f"'drop'; got keys {sorted(entry)}")
  path = str(entry["path"])
  take = entry.get("take") or ()
  if isinstance(take, str):
    source = _parse_selection(path, take)
    if source.drop:
      raise ValueError(f"train.init_from: {path}: give drops as 'drop', not in 'take'")
    take = source.take
  elif hasattr(take, "items"):
    take = tuple(_item(str(k), str(v), path) for k, v in take.items())
  else:
    take = tuple(_item(str(k), None, path) for k in take)
  drop = entry.get("drop") or ()
  drop = tuple(d.strip() for d in ([drop] if isinstance(drop, str) else drop))
  return _checked(InitSource(path, tuple(take), drop))


def parse_sources(init_from) -> list[InitSource]:
  """`train.init_from` (see the module docstring) -> its sources, in order."""
  if not init_from:
    return []
  if isinstance(init_from, str):
    if ";" in init_from or _SELECTOR.match(init_from.strip()):
      return [_from_string(s) for s in init_from.split(";") if s.strip()]
    return [InitSource(p.strip()) for p in init_from.split(",") if p.strip()]
  if hasattr(init_from, "items"):
    return [_from_mapping(init_from)]
  return [_from_mapping(e) if hasattr(e, "items") else _from_string(str(e)) for e in init_from]


def get(tree, path: Path):
  for key in path:
    if not hasattr(tree, "items") or key not in tree:
      return None
    tree = tree[key]
  return tree


def _leaves(tree, prefix: Path = ()) -> dict[Path, Any]:
  if not hasattr(tree, "items"):
    return {prefix: tree}
  out = {}
  for key, node in tree.items():
    out.update(_leaves(node, (*prefix, key)))
  return out


def _dropped_by(path: Path, pattern: str) -> Path | None:
  """The shortest prefix of `path` that `pattern` matches, if any."""
  for n in range(1, len(path) + 1):
    if fnmatch.fnmatchcase("/".join(path[:n]), pattern):
      return path[:n]
  return None


@dataclasses.dataclass(frozen=True)
class Transfer:
  """One source subtree into one target subtree: the source leaves to read (full source paths)
  and where each lands relative to the target."""

  source: InitSource
  src: Path
  dst: Path
  leaves: tuple[Path, ...]  # relative to `src` and to `dst` alike


@dataclasses.dataclass(frozen=True)
class Plan:
  transfers: tuple[Transfer, ...]
  dropped: dict[str, tuple[str, ...]]  # source path -> the dropped subtrees, '/'-joined
  fresh: tuple[str, ...]  # model subtrees no source fills, '/'-joined

  def report(self) -> str:
    loaded = sorted("/".join(t.dst) + ("" if t.src == t.dst else f" (from {'/'.join(t.src)})")
                    for t in self.transfers)
    lines = [f"init_from: loaded {loaded}; randomly initialised {list(self.fresh)}"]
    for path, subtrees in self.dropped.items():
      lines.append(f"init_from: {path}: dropped (no place in this model) {list(subtrees)}")
    return "\n".join(lines)


def _shape(x) -> tuple[int, ...]:
  return tuple(getattr(x, "shape", ()))


def plan(sources: list[InitSource], stored: Mapping[str, Any], params: Mapping[str, Any]) -> Plan:
  """Checks `sources` against the model's `params` (abstract or real, without LoRA factors)
  from each checkpoint's parameter metadata `stored[path]` (nothing read yet)."""
  transfers, dropped, owner = [], {}, {}
  takes = {}
  for source in sources:  # every place filled once, before any leaf is compared
    meta = stored[source.path]
    takes[source] = source.take or tuple(((name,), (name,)) for name in meta)
    for src, dst in takes[source]:
      name = "/".join(dst)
      if get(meta, src) is None:
        raise ValueError(f"{source.path}: has no {'/'.join(src)!r}; its components: "
                         f"{sorted(meta)}")
      if get(params, dst) is None:
        raise ValueError(f"{source.path}: component {name!r} is not part of this model "
                         f"({sorted(params)})")
      for other, other_path in owner.items():
        if other[:len(dst)] == dst or dst[:len(other)] == other:
          where = (f"both {other_path} and {source.path}" if other_path != source.path
                   else f"{source.path} twice")
          raise ValueError(f"component {name!r} is in {where}" if other == dst else
                           f"{'/'.join(other)!r} and {name!r} overlap (from {where})")
      owner[dst] = source.path
  for source in sources:
    meta, take = stored[source.path], takes[source]
    used = {p: [] for p in source.drop}
    for src, dst in take:
      subtree, target, name = get(meta, src), get(params, dst), "/".join(dst)
      kept = {}
      for rel, leaf in _leaves(subtree).items():
        hits = [(p, _dropped_by((*src, *rel), p)) for p in source.drop]
        hits = [(p, prefix) for p, prefix in hits if prefix is not None]
        for p, prefix in hits:
          if "/".join(prefix) not in used[p]:
            used[p].append("/".join(prefix))
        if not hits:
          kept[rel] = leaf
      expected = {rel: _shape(leaf) for rel, leaf in _leaves(target).items()}
      key = lambda rel: "".join(f"[{k!r}]" for k in rel)
      for rel in sorted(set(expected) - set(kept)):  # missing first: the likelier mistake
        raise ValueError(f"{source.path}: component {name!r} does not match the model at "
                         f"{key(rel)}: checkpoint None, model {expected[rel]} (the checkpoint's "
                         f"{'/'.join((*src, *rel))!r} is missing)")
      for rel in sorted(set(kept) - set(expected)):
        full = "/".join((*src, *rel))
        raise ValueError(
            f"{source.path}: component {name!r} does not match the model at {key(rel)}: "
            f"checkpoint {_shape(kept[rel])}, model None; drop the checkpoint's {full!r} "
            f"explicitly if this model has no place for it ('-{full}')")
      for rel in sorted(kept):
        if _shape(kept[rel]) != expected[rel]:
          raise ValueError(f"{source.path}: component {name!r} does not match the model at "
                           f"{key(rel)}: checkpoint {_shape(kept[rel])}, model {expected[rel]}")
      transfers.append(Transfer(source, src, dst, tuple(sorted(kept))))
    for pattern, hit in used.items():
      if not hit:
        raise ValueError(f"{source.path}: drop {pattern!r} matches no parameter of what it takes "
                         f"({['/'.join(s) for s, _ in take]})")
    if source.drop:
      dropped[source.path] = tuple(sorted({p for hit in used.values() for p in hit}))
  return Plan(tuple(transfers), dropped, tuple(_fresh(params, set(owner))))


def _fresh(tree, filled: set[Path], prefix: Path = ()) -> list[str]:
  """The largest subtrees of `tree` with nothing filled inside them."""
  out = []
  for key, node in tree.items():
    here = (*prefix, key)
    if here in filled:
      continue
    inside = any(p[:len(here)] == here for p in filled)
    if inside and hasattr(node, "items"):
      out.extend(_fresh(node, filled, here))
    else:
      out.append("/".join(here))
  return out


def nested(leaves: Mapping[Path, Any]) -> dict:
  """`{path: leaf}` -> the nested dict."""
  out: dict = {}
  for path, leaf in leaves.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return out


def replaced(tree: Mapping[str, Any], path: Path, value) -> dict:
  """`tree` (nested dicts) with the subtree at `path` replaced by `value` (copies on the way)."""
  out = dict(tree)
  out[path[0]] = value if len(path) == 1 else replaced(tree[path[0]], path[1:], value)
  return out


def read_paths(transfers: tuple[Transfer, ...], source: InitSource) -> list[Path]:
  """The full source paths of every leaf a source gives (the others are not read)."""
  return [(*t.src, *rel) for t in transfers if t.source == source for rel in t.leaves]


def leaves_of(loaded, transfer: Transfer) -> dict:
  """A transfer's subtree (nested, dropped leaves left out) from the loaded source tree."""
  return nested({rel: get(loaded, (*transfer.src, *rel)) for rel in transfer.leaves})

