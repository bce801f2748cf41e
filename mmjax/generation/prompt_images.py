"""Chat mode's images: a local path or an `http(s)://` URL, decoded as every image is
(`mmjax.data.preprocess.common.decode_image`).

A URL is fetched with the standard library (no extra dependency for one GET); a machine without
network access gets one line that says so and what to do instead, not a socket traceback.
"""

import os
import socket
import urllib.error
import urllib.request

from PIL import Image

from mmjax.data.preprocess import common
from mmjax.errors import UserError

MAX_BYTES = 64 * 1024 * 1024  # larger downloads are refused: no chat image needs this much
TIMEOUT_S = 30.0


class ImageFetchError(UserError):
  """An image URL that could not be fetched."""


def is_url(ref) -> bool:
  return isinstance(ref, str) and ref.startswith(("http://", "https://"))


def check(refs: list[str]) -> None:
  """FileNotFoundError for a local path that does not exist (URLs are fetched when used)."""
  for ref in refs:
    if not is_url(ref) and not os.path.exists(ref):
      raise FileNotFoundError(f"{ref}: no such image")


def fetch(url: str, timeout: float = TIMEOUT_S) -> bytes:
  """The body of `url`; ImageFetchError naming the URL and why it failed."""
  request = urllib.request.Request(url, headers={"User-Agent": "mmjax"})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      data = response.read(MAX_BYTES + 1)
  except urllib.error.HTTPError as e:
    raise ImageFetchError(f"{url}: the server answered {e.code} {e.reason}") from None
  except (urllib.error.URLError, socket.timeout, OSError) as e:
    reason = getattr(e, "reason", e)
    raise ImageFetchError(
        f"cannot fetch {url} ({reason}): this machine may have no network access; download the "
        "image elsewhere and pass its path instead") from None
  if len(data) > MAX_BYTES:
    raise ImageFetchError(f"{url}: larger than {MAX_BYTES // 2**20} MiB; not an image to chat about")
  return data


def load(ref: str | bytes) -> Image.Image:
  """The RGB image at a path or URL, or encoded in bytes (evaluation sets embed them); a
  ValueError naming `ref` when it is no image."""
  data = fetch(ref) if is_url(ref) else ref
  try:
    return common.decode_image(data)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # not an image
    if isinstance(e, FileNotFoundError):
      raise
    name = ref if isinstance(ref, str) else f"{len(ref)} bytes of image data"
    raise ValueError(f"{name}: not a readable image ({e})") from None
