"""Bad samples: the reasons a sample is skipped, the error that carries one, and a counter.

A bad sample never crashes a job. Preprocessing raises ``SampleError(reason, sample_id, detail)``;
the pipeline turns it into a skip, counts it per reason and logs the first few ids of each reason.
"""

from __future__ import annotations

import collections
import logging

from mmjax.errors import UserError

log = logging.getLogger('mmjax.data')

REASONS = (
    'bad_record',             # malformed JSON / unknown roles / undecodable shard record
    'empty_conversation',     # no messages, or no non-empty assistant turn
    'missing_image',          # image file not found
    'corrupt_image',          # image bytes that PIL cannot decode
    'image_count_mismatch',   # number of <image> placeholders != number of images
    'too_long',               # over max_length and cannot be truncated without losing every target
    'too_many_images',        # more image tiles than a packed row can hold
    'missing_video',          # video file / frame directory not found
    'corrupt_video',          # a video PyAV cannot decode, or unreadable frames
    # (Appended, not sorted: iterator states saved in checkpoints hold counts in this order.)
    'image_outside_root',     # an image path that leads outside the source's image root
    'image_too_large',        # more pixels than PIL decodes safely (a decompression bomb)
    'template_error',         # the chat template rejected the conversation (raise_exception, ...)
)


def counts_vector(counts) -> list[int]:
  """Per-reason counts as saved by an older version (fewer reasons) padded to ``REASONS``."""
  counts = [int(n) for n in counts]
  return counts + [0] * (len(REASONS) - len(counts))


class TooManySkips(UserError):
  """So many samples in a row were skipped that the data (or the data config) is unusable."""


class SampleError(Exception):
  """A sample that cannot be used; ``reason`` is one of ``REASONS``."""

  def __init__(self, reason: str, sample_id: str, detail: str = ''):
    if reason not in REASONS:
      raise ValueError(f'unknown skip reason {reason!r}; expected one of {REASONS}')
    super().__init__(f'sample {sample_id}: {reason}: {detail}')
    self.reason, self.sample_id, self.detail = reason, sample_id, detail


class SkipCounter:
  """Counts skips per reason and logs the first ``log_first`` sample ids of each reason."""

  def __init__(self, log_first: int = 5):
    self.counts = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)
    self.log_first = log_first

  def add(self, error: SampleError) -> None:
    self.counts[error.reason] += 1
    if len(self.examples[error.reason]) < self.log_first:
      self.examples[error.reason].append(error.sample_id)
      log.warning('skipping sample %s (%s): %s', error.sample_id, error.reason, error.detail)

  def add_counts(self, counts) -> None:
    """Adds a vector of per-reason counts (ordered as ``REASONS``) or a mapping."""
    items = counts.items() if hasattr(counts, 'items') else zip(REASONS, counts)
    for reason, n in items:
      if int(n):
        self.counts[reason] += int(n)

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def as_dict(self) -> dict[str, int]:
    return {r: self.counts[r] for r in REASONS if self.counts[r]}

  def vector(self) -> list[int]:
    return [self.counts[r] for r in REASONS]
