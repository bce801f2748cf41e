"""Evaluation sets: JSON (a list, or `{"data": [...]}` as DocVQA ships), JSONL or Parquet.

Open-ended records: `{image, question, answers}` (`answers` a list of strings, or of
`{"answer": ...}` objects as in VQAv2's annotations; or one `answer` string). Multiple choice:
`{image, question, options, answer}` (`options` a list or a `{"A": ..., "B": ...}` mapping, or
MMBench-style columns `A`, `B`, ...; `answer` a letter, a 0-based index or the option's text).
`image` (or `images`, a list) is a path relative to `image_root` (default: the data file's
directory), encoded bytes, or a `{bytes, path}` struct (Hugging Face datasets' Parquet); a
record without one is a text-only question. `id` (or `question_id` / `questionId`) names a
record in the predictions; the default is its index.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator

from mmjax.data.records import image_refs
from mmjax.eval.metrics import LETTERS, normalize_exact


@dataclasses.dataclass
class EvalItem:
  id: str
  question: str
  images: list  # encoded bytes or file paths
  answers: list[str]  # references of an open-ended question
  options: list[str] | None = None  # multiple choice
  answer_index: int | None = None  # the right option


class EvalSet:
  """Sized iterable of `EvalItem`s; Parquet is streamed in row batches (images stay on disk
  until their batch is read)."""

  def __init__(self, path: str, image_root: str | None = None, limit: int | None = None):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no such evaluation file")
    self.path = path
    self.image_root = image_root if image_root is not None else os.path.dirname(
        os.path.abspath(path))
    self._parquet = path.endswith(".parquet")
    if self._parquet:
      import pyarrow.parquet as pq

      self._total = pq.ParquetFile(path).metadata.num_rows
    else:
      self._records = _read_json_records(path)
      self._total = len(self._records)
    self.limit = limit

  def __len__(self) -> int:
    return self._total if self.limit is None else min(self.limit, self._total)

  def _raw(self) -> Iterator[dict]:
    if not self._parquet:
      yield from self._records
      return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(self.path).iter_batches(batch_size=64):
      yield from batch.to_pylist()

  def __iter__(self) -> Iterator[EvalItem]:
    for index, record in enumerate(self._raw()):
      if index >= len(self):
        return
      yield to_item(record, index, self.image_root, where=f"{self.path} record {index}")


def _read_json_records(path: str) -> list:
  """A JSON list, `{"data": [...]}`, or JSON lines (a .jsonl file, or a .json one that holds
  several objects)."""
  with open(path, "rb") as f:
    text = f.read()
  if not path.endswith(".jsonl") and text.lstrip()[:1] in (b"[", b"{"):
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      if text.lstrip()[:1] == b"[" or "Extra data" not in str(e):
        raise ValueError(f"{path}: invalid JSON: {e}") from e
      data = None  # several objects: JSON lines
    if isinstance(data, list):
      return data
    if isinstance(data, dict):
      if not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: a JSON object must hold the records as a list under 'data'")
      return data["data"]
  records = []
  for number, line in enumerate(text.splitlines(), 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: invalid JSON line: {e}") from e
  return records


def _options(record: dict) -> list[str] | None:
  options = record.get("options", record.get("choices"))
  if options is None and "A" in record and "B" in record:  # MMBench columns A, B, C, D
    options = {k: record[k] for k in LETTERS if record.get(k) not in (None, "")}
  if options is None:
    return None
  if isinstance(options, str):  # a JSON list stored as text (some Parquet exports)
    options = json.loads(options)
  if isinstance(options, dict):
    options = [options[k] for k in sorted(options)]
  return [str(o) for o in options]


def _answer_index(answer: Any, options: list[str], where: str) -> int:
  if isinstance(answer, bool):
    answer = str(answer)
  if isinstance(answer, int):
    index = answer
  elif isinstance(answer, str) and answer.strip() in LETTERS[:len(options)] and answer.strip():
    index = LETTERS.index(answer.strip())
  elif isinstance(answer, str) and normalize_exact(answer) in map(normalize_exact, options):
    index = [normalize_exact(o) for o in options].index(normalize_exact(answer))
  else:
    raise ValueError(f"{where}: answer {answer!r} is neither an option's letter "
                     f"({LETTERS[:len(options)]}), index nor text")
  if not 0 <= index < len(options):
    raise ValueError(f"{where}: answer index {index} outside the {len(options)} options")
  return index


def to_item(record: Any, index: int, image_root: str | None, where: str) -> EvalItem:
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
  item_id = str(next((record[k] for k in ("id", "question_id", "questionId") if k in record),
                     index))
  question = record.get("question")
  if not isinstance(question, str) or not question.strip():
    raise ValueError(f"{where} (id {item_id}): no 'question' text")
  try:
    images = image_refs(record.get("images", record.get("image")), image_root)
  except ValueError as e:
    raise ValueError(f"{where} (id {item_id}): {e}") from e
  options = _options(record)
  if options is not None:
    if len(options) < 2 or len(options) > len(LETTERS):
      raise ValueError(f"{where} (id {item_id}): {len(options)} options; expected 2-26")
    if "answer" not in record:
      raise ValueError(f"{where} (id {item_id}): multiple choice without an 'answer'")
    return EvalItem(item_id, question, images, [], options,
                    _answer_index(record["answer"], options, f"{where} (id {item_id})"))
  answers = record.get("answers")
  if answers is None and record.get("answer") is not None:
    answers = [record["answer"]]
  if isinstance(answers, str):
    answers = [answers]
  if not answers:
    raise ValueError(f"{where} (id {item_id}): no 'answers' (or 'answer') to score against")
  answers = [str(a["answer"] if isinstance(a, dict) else a) for a in answers]
  return EvalItem(item_id, question, images, answers)
