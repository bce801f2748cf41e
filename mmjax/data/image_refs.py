"""Image references in dataset records: what a record may name as an image, and where a path may
lead.

Every path a source hands on (training, ``mmjax data check``, ``mmjax data pack``) goes through
``resolve``: relative paths are taken against the source's image root, and a path that leads
outside it (``../x.png``, ``/etc/passwd``) is refused, so a dataset file cannot make a job read,
or ``data pack`` embed, files its author chose elsewhere on the machine. The check is on the
normalised path, not on the file system: a symlink placed inside the root by its owner is followed.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mmjax.data.validation import SampleError

IMAGE_TYPES = (str, bytes, np.ndarray)  # a path, encoded bytes, or a uint8 array


def refs_of(field: Any, sample_id: str) -> list:
  """A record's ``image`` / ``images`` field as a list of references; SampleError('bad_record')
  for anything else (``123``, ``[null]``, ``[{...}]``, an empty path)."""
  if field is None:
    return []
  items = [field] if isinstance(field, IMAGE_TYPES) else field
  if not isinstance(items, (list, tuple)):
    raise SampleError('bad_record', sample_id,
                      f'image field is {_show(field)}; expected a path or a list of paths')
  for i, ref in enumerate(items):
    if not isinstance(ref, IMAGE_TYPES) or (isinstance(ref, str) and not ref.strip()):
      raise SampleError('bad_record', sample_id, f'image {i} is {_show(ref)}; expected a path')
  return list(items)


def resolve(ref: Any, image_root: str | None, sample_id: str) -> Any:
  """A path resolved against ``image_root`` (None: taken as it is); bytes and arrays unchanged.

  Raises SampleError('image_outside_root') for a path that leads outside the root.
  """
  if not isinstance(ref, str):
    return ref
  if ref.startswith('file://'):
    ref = ref[len('file://'):]
  if image_root is None:
    return ref
  root = os.path.abspath(image_root)
  path = os.path.normpath(os.path.join(root, ref))  # an absolute `ref` replaces the root
  if os.path.commonpath([root, path]) != root:
    raise SampleError('image_outside_root', sample_id,
                      f'{ref!r} leads outside the image root {root} (set image_root to a directory '
                      'that holds every image)')
  return path


def _show(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + '...'
