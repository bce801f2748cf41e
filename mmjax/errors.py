"""Errors a user can act on, and how the `mmjax` command reports them: one line, exit 1.

`mmjax/cli.py` `main` passes every exception of a subcommand to `report`: an expected error (a
file or directory that is missing, exists or cannot be written, a value out of range, a damaged or
tampered file, a full disk) prints `mmjax CMD: error: MESSAGE` and exits 1; anything else is a bug
and keeps its traceback. `MMJAX_DEBUG=1` prints the traceback of expected errors too.

Orbax writes arrays in background threads; when one fails (a full disk), Orbax logs the exception
with its traceback from every thread (hundreds of lines) and then raises it again in the caller,
where it is reported once. Orbax also closes the event loop of the failed call while TensorStore
still finishes the writes it abandoned, whose callbacks then fail with "Event loop is closed", and
asyncio logs the abandoned futures as they are collected. `quiet_background_failures` drops those
repeats.
"""

import errno
import logging
import os
import re
import sys
import traceback
import warnings


class UserError(Exception):
  """A failure the user can fix (the message says how); never a bug."""


class ConfigError(UserError):
  """A config file or override that cannot be used."""


# Types whose messages already name the thing at fault (our own errors raise these too).
EXPECTED = (UserError, ValueError, KeyError, OSError)

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# TensorStore reports OS errors inside its own messages: "... [os_error_code='28']".
_OS_CODE = re.compile(r"os_error_code='?(\d+)")
_WRITING = re.compile(r'writing (?:local )?file "([^"]+)"', re.IGNORECASE)


def debug() -> bool:
  return os.environ.get("MMJAX_DEBUG", "") not in ("", "0")


def _chain(exc: BaseException):
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    yield exc
    exc = exc.__cause__ or exc.__context__


def disk_full(exc: BaseException) -> str | None:
  """A one-line description when `exc` (or what caused it) is a full disk or a file size limit."""
  for e in _chain(exc):
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
      found = _OS_CODE.search(str(e))
      code = int(found.group(1)) if found else None
    if code in _DISK_FULL_ERRNOS:
      where = getattr(e, "filename", None) or next(iter(_WRITING.findall(str(e))), None)
      what = os.strerror(code).lower()
      return f"{what}{f' while writing {where}' if where else ''}: free space or write elsewhere"
  return None


def one_line(exc: BaseException) -> str:
  """The message of an expected error as one line (KeyError's without its quotes)."""
  message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
  text = str(message).strip() or type(exc).__name__
  first = text.splitlines()[0]
  return first if len(first) <= 2000 else first[:2000] + " ..."


def user_message(exc: BaseException) -> str | None:
  """What to print for an expected error; None for a bug (let the traceback show)."""
  full = disk_full(exc)
  if full is not None:
    return full
  if isinstance(exc, EXPECTED):
    return one_line(exc)
  return None


def _from_orbax(error: BaseException | None) -> bool:
  return error is not None and any(
      "orbax" in frame.filename for frame in traceback.extract_tb(error.__traceback__))


class _DropOrbaxRepeats(logging.Filter):
  """Records of an exception that Orbax raises again in the caller: its background threads'
  (writes, commits, finalisation) and the asyncio futures it abandons once a gather failed."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or not record.exc_info:
      return True
    if record.name == "asyncio":  # TensorStore's write errors may carry no Orbax frame
      error = record.exc_info[1]
      return not (_from_orbax(error) or disk_full(error) is not None)
    return "orbax" not in record.pathname


_installed = False


def quiet_background_failures() -> None:
  """Installs, once for the process (a failure's abandoned futures are collected as it exits),
  the filters that drop Orbax's repeats of an error the command reports itself."""
  global _installed
  if _installed or debug():
    return
  _installed = True
  repeats = _DropOrbaxRepeats()
  logging.getLogger("absl").addFilter(repeats)
  logging.getLogger("asyncio").addFilter(repeats)
  previous_hook = sys.unraisablehook

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous_hook(unraisable)

  sys.unraisablehook = hook
  # Orbax's abandoned array writes, collected at exit after the failure was reported.
  warnings.filterwarnings("ignore", message=r"coroutine 'async_serialize.*' was never awaited",
                          category=RuntimeWarning)


def report(command: str, exc: BaseException) -> int | None:
  """Prints an expected error as `mmjax COMMAND: error: ...` and returns 1; None for a bug."""
  message = user_message(exc)
  if message is None:
    return None
  if debug():
    traceback.print_exception(exc)
  print(f"mmjax {command}: error: {message}", file=sys.stderr)
  return 1
