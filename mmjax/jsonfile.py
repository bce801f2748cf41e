"""JSON files a user hands us (config.json, mmjax.json, index files): read as one object."""

import json


def read_object(path: str, error: type[Exception] = ValueError) -> dict:
  """The JSON object in `path` (after a UTF-8 byte order mark, if any); `error` naming the file
  when it is not valid JSON or holds something other than an object (e.g. an array)."""
  with open(path, encoding="utf-8-sig") as f:
    try:
      value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise error(f"{path}: not valid JSON ({e})") from None
  if not isinstance(value, dict):
    raise error(f"{path}: expected a JSON object, found a {type(value).__name__}")
  return value
