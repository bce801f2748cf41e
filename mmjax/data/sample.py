"""One raw sample -> one model example: images, chat template, tokens, image tokens, loss mask.

``SampleProcessor(cfg, tokenizer)(raw)`` returns a dict of unpacked numpy arrays, every feature's
first axis being its own length (the packer stacks samples along it)::

  input_ids       [L] int32     token ids, each image's placeholder expanded to its token count
  labels          [L] int32     next-token targets: labels[t] = input_ids[t + 1] (0 at the end)
  loss_mask       [L] float32   1 where labels[t] is an assistant token (end-of-turn included)
  pixel_values    [n_tiles, H, W, 3] float32 NHWC   (qwen2_vl: [n_patches, 3 * T * P * P])
  image_sizes     [n_images, 2] int32  original (height, width) of each image
  image_tiles     [n_images] int32     tiles (qwen2_vl: patches) each image contributed
  <the image family's per-image arrays>  e.g. image_grid_thw [n_images, 3] (qwen2_vl),
                  aspect_ratio_ids [n_images] and aspect_ratio_mask [n_images, S] (mllama, whose
                  pixel_values hold S = image.max_tiles tiles per image, unused ones zero)
  mrope_positions [L, 3] int32  (only with ``cfg.mrope``)

or raises ``SampleError`` naming the sample and the reason (see ``validation.REASONS``).
Interleaved image-text documents (raw samples with a ``text``, no ``messages``) take the same
features through ``mmjax.data.documents`` (no template; targets are every text token).

Truncation to ``cfg.max_length`` never cuts through an image: the cut moves to before the image's
token run (wrapper tokens included) and that image is dropped; if no supervised token survives,
the sample is skipped as ``too_long``.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from mmjax.data import documents, preprocess
from mmjax.data.sources import IMAGE
from mmjax.data.templates import ChatTemplate, ChatTemplateError
from mmjax.data.tokenizer import Tokenizer
from mmjax.data.validation import SampleError

ROLES = ('system', 'user', 'assistant')


def load_image(ref, sample_id: str) -> Image.Image:
  """Bytes / path / uint8 array -> RGB PIL image, or SampleError naming why not.

  The one place where an image becomes pixels or a skip: ``missing_image`` (no such file),
  ``image_too_large`` (more pixels than PIL's decompression-bomb limit, ``Image.MAX_IMAGE_PIXELS``),
  ``corrupt_image`` (anything else the decoder rejects), ``bad_record`` (not an image reference).
  """
  if isinstance(ref, np.ndarray):
    if ref.dtype != np.uint8 or ref.ndim not in (2, 3):
      raise SampleError('corrupt_image', sample_id, f'image array of dtype {ref.dtype} shape {ref.shape}')
    return preprocess.common.to_rgb(Image.fromarray(ref[..., 0] if ref.ndim == 3 and ref.shape[-1] == 1 else ref))
  if not isinstance(ref, (str, bytes, bytearray, memoryview)):
    raise SampleError('bad_record', sample_id, f'image reference of type {type(ref).__name__}')
  if isinstance(ref, str) and not os.path.isfile(ref):
    raise SampleError('missing_image', sample_id, f'no image file at {ref}')
  where = ref if isinstance(ref, str) else f'{len(ref)} embedded bytes'
  try:
    return preprocess.decode_image(ref)
  except Image.DecompressionBombError as e:
    raise SampleError('image_too_large', sample_id, f'{where}: {e}') from e
  except Exception as e:  # pylint: disable=broad-except
    # Decoders fed hostile bytes raise far more than OSError (struct.error, IndexError,
    # ZeroDivisionError, EOFError...): every one of them means this image cannot be used.
    raise SampleError('corrupt_image', sample_id,
                      f'cannot decode {where}: {type(e).__name__}: {e}') from e


def mrope_positions(input_ids: np.ndarray, image_token_id: int, grids: list[tuple[int, int, int]],
                    merge_size: int) -> np.ndarray:
  """Qwen2-VL 3-D (t, h, w) positions [L, 3]: text advances all three; an image's tokens get
  (start, start + row, start + col) and the text after it resumes at max + 1."""
  n = len(input_ids)
  out = np.zeros((n, 3), np.int32)
  is_image = input_ids == image_token_id
  t, pos, image = 0, 0, 0
  while t < n:
    if not is_image[t]:
      end = t
      while end < n and not is_image[end]:
        end += 1
      out[t:end] = (pos + np.arange(end - t, dtype=np.int32))[:, None]
      pos += end - t
      t = end
    else:
      gt, gh, gw = grids[image]
      gh, gw = gh // merge_size, gw // merge_size
      k = gt * gh * gw
      tt, hh, ww = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing='ij')
      out[t:t + k] = pos + np.stack([tt.ravel(), hh.ravel(), ww.ravel()], axis=-1)
      pos += max(gt, gh, gw)
      t += k
      image += 1
  return out


def next_token_targets(ids: np.ndarray, assistant: np.ndarray, sample_id: str,
                       max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """labels [L] (labels[t] = ids[t + 1]) and loss_mask [L] (1 where that target is an assistant
  token); SampleError('too_long') when no assistant token is left."""
  labels = np.zeros(len(ids), np.int32)
  labels[:-1] = ids[1:]
  loss_mask = np.zeros(len(ids), np.float32)
  loss_mask[:-1] = assistant[1:]
  if not loss_mask.any():
    raise SampleError('too_long', sample_id, f'no assistant token within max_length {max_length}')
  return labels, loss_mask


class SampleProcessor:
  """Picklable callable: raw sample dict -> example dict (see module docstring)."""

  def __init__(self, cfg, tokenizer: Tokenizer):
    self.cfg = cfg
    self.tokenizer = tokenizer
    self.images = preprocess.ImageProcessor(cfg.image)
    self.image_id = tokenizer.token_to_id(cfg.image_token)
    self.wrap = [tokenizer.token_to_id(t) for t in (cfg.image_start, cfg.image_end) if t]
    # (opening, closing) wrapper ids, None where unset (interleaved documents tell them apart)
    self.wrap_ids = tuple(tokenizer.token_to_id(t) if t else None
                          for t in (cfg.image_start, cfg.image_end))
    # The family's tokens inside an image's run besides image_token (Pixtral's [IMG_BREAK], ...).
    self.layout_ids = [tokenizer.token_to_id(t) for t in preprocess.layout_tokens(cfg.image)]
    self.image_text = f'{cfg.image_start}{cfg.image_token}{cfg.image_end}'
    self.template = ChatTemplate.from_name(cfg.template, tokenizer, image_placeholder=self.image_text)

  # ---- pieces -------------------------------------------------------------------------------------

  @staticmethod
  def check_structure(raw: dict) -> None:
    """Record errors, empty conversations, placeholder/image count mismatch (no decoding)."""
    sample_id = raw['id']
    if 'error' in raw:
      raise SampleError(raw['error'][0], sample_id, raw['error'][1])
    if documents.is_document(raw):
      documents.check_document(raw)
      return
    messages = raw['messages']
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and m.get('role') in ROLES and isinstance(m.get('content'), str)
        for m in messages):  # e.g. a shard written by another tool
      raise SampleError('bad_record', sample_id,
                        f'messages must be a list of {{"role", "content": str}} with roles {ROLES}')
    if not isinstance(raw['images'], list):
      raise SampleError('bad_record', sample_id,
                        f'images is a {type(raw["images"]).__name__}, not a list')
    if not messages or not any(m['role'] == 'assistant' and m['content'].strip() for m in messages):
      raise SampleError('empty_conversation', sample_id, 'no non-empty assistant turn')
    placeholders = sum(m['content'].count(IMAGE) for m in messages)
    if placeholders != len(raw['images']):
      raise SampleError('image_count_mismatch', sample_id,
                        f'{placeholders} {IMAGE} placeholders but {len(raw["images"])} images')

  def tokenize(self, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Template + tokenize: ids [n] int32 and assistant mask [n] bool (images unexpanded)."""
    messages = [{'role': m['role'], 'content': m['content'].replace(IMAGE, self.image_text)} for m in messages]
    text, spans = self.template.render_with_spans(messages)
    ids, offsets = self.tokenizer.encode(text, add_special_tokens=self.template.add_special_tokens)
    assistant = np.zeros(len(ids), bool)
    for start, end in spans:
      assistant |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
    return ids, assistant

  def tokens(self, raw: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template + tokenize a checked raw sample: ids [n], assistant mask [n] and the positions
    of its image placeholders (one per image)."""
    sample_id = raw['id']
    try:
      ids, assistant = self.tokenize(raw['messages'])
    except ChatTemplateError as e:
      raise SampleError('template_error', sample_id, str(e)) from None
    image_pos = np.flatnonzero(ids == self.image_id)
    if len(image_pos) != len(raw['images']):
      raise SampleError('image_count_mismatch', sample_id,
                        f'{len(image_pos)} image tokens after templating but {len(raw["images"])} images')
    return ids, assistant, image_pos

  def expand(self, sample_id: str, ids: np.ndarray, assistant: np.ndarray, image_pos: np.ndarray,
             pil_images: list) -> tuple[np.ndarray, np.ndarray, int]:
    """Each placeholder expanded to its image's token count, then the cut at max_length (never
    through an image): ids [L], assistant mask [L], and how many images are kept."""
    cfg = self.cfg
    # Token counts need only the image sizes: nothing is decoded past this point yet.
    shared = len(pil_images) > 1  # (onevision) images sharing a sample are laid out apart
    counts = [self.images.num_tokens(im.height, im.width, shared) for im in pil_images]
    repeats = np.ones(len(ids), np.int64)
    repeats[image_pos] = counts
    ids = np.repeat(ids, repeats)
    assistant = np.repeat(assistant, repeats) & (ids != self.image_id)
    starts = image_pos + np.concatenate([[0], np.cumsum(np.asarray(counts) - 1)])[:len(image_pos)]
    starts = starts.astype(np.int64)  # first image token of each image, after expansion
    self.lay_out_runs(ids, starts, pil_images)

    keep_images = len(pil_images)
    if len(ids) > cfg.max_length:
      if not cfg.truncate:
        raise SampleError('too_long', sample_id, f'{len(ids)} tokens > max_length {cfg.max_length}')
      cut = cfg.max_length
      for i, (s, c) in enumerate(zip(starts, counts)):
        run_start = s - (1 if cfg.image_start else 0)
        run_end = s + c + (1 if cfg.image_end else 0)
        if run_end > cut:  # This image (and every later one) would be cut: stop before it.
          cut, keep_images = min(cut, run_start), i
          break
      ids, assistant = ids[:cut], assistant[:cut]
    return ids, assistant, keep_images

  def lay_out_runs(self, ids: np.ndarray, starts, pil_images: list) -> None:
    """Writes, in place, each image's placeholder run (from its first token `starts[i]`) where
    the family's holds layout tokens besides `image_token` (Pixtral's row breaks, Fuyu's
    newlines); other families' runs stay `image_token` throughout."""
    for s, im in zip(starts, pil_images):
      run = self.images.placeholder_ids(im.height, im.width, self.image_id, self.layout_ids)
      if run is not None:
        ids[s:s + len(run)] = run

  def image_arrays(self, sample_id: str, pil_images: list,
                   shared: bool | None = None) -> tuple[dict, list]:
    """The images' example features (pixels, sizes, tiles, the family's per-image arrays) and
    their processed forms. `shared`: the sample held more than one image before any was cut
    (default: these images are more than one), as its token counts were made."""
    shared = len(pil_images) > 1 if shared is None else shared
    processed = [self.images(im, shared) for im in pil_images]
    tiles = [self.images.sample_tiles(p) for p in processed]
    pixels = np.concatenate(tiles) if tiles else self.images.empty_tiles()
    if len(pixels) > self.cfg.max_tiles:
      raise SampleError('too_many_images', sample_id, f'{len(pixels)} image tiles/patches > '
                        f'max_tiles {self.cfg.max_tiles} per row')
    arrays = {
        'pixel_values': pixels.astype(np.float32, copy=False),
        'image_sizes': np.asarray([p.image_size for p in processed], np.int32).reshape(-1, 2),
        'image_tiles': np.asarray([len(t) for t in tiles], np.int32),
    }
    arrays.update(self.images.image_features(processed))
    arrays.update(self.images.tile_features(processed))  # (pixtral) beside pixel_values
    return arrays, processed

  def text_arrays(self, ids: np.ndarray, targets: tuple[np.ndarray, np.ndarray],
                  processed: list) -> dict:
    """input_ids, labels, loss_mask (`targets`: `next_token_targets`) and M-RoPE positions."""
    labels, loss_mask = targets
    arrays = {'input_ids': ids.astype(np.int32), 'labels': labels, 'loss_mask': loss_mask}
    slots = ids == self.image_id
    for name, values in self.images.token_features(processed).items():  # (anyres) per token
      if len(values) != int(slots.sum()):
        raise ValueError(f'{name} has {len(values)} rows for {int(slots.sum())} image tokens')
      off = -1 if np.issubdtype(values.dtype, np.integer) else 0  # off images
      full = np.full((len(ids), *values.shape[1:]), off, values.dtype)  # [L, ...]
      full[slots] = values
      arrays[name] = full
    if self.cfg.mrope:  # (qwen2_vl)
      grids = [p.grid_thw for p in processed]
      arrays['mrope_positions'] = mrope_positions(arrays['input_ids'], self.image_id, grids,
                                                  self.cfg.image.merge_size)
    return arrays

  # ---- the whole sample ---------------------------------------------------------------------------

  def __call__(self, raw: dict) -> dict:
    sample_id = raw['id']
    self.check_structure(raw)
    if documents.is_document(raw):  # an interleaved image-text document, not a conversation
      return documents.process_document(self, raw)
    ids, assistant, image_pos = self.tokens(raw)
    pil_images = [load_image(ref, sample_id) for ref in raw['images']]
    ids, assistant, keep = self.expand(sample_id, ids, assistant, image_pos, pil_images)
    # Targets first: a sample without any left is skipped before its pixels are processed.
    targets = next_token_targets(ids, assistant, sample_id, self.cfg.max_length)
    images, processed = self.image_arrays(sample_id, pil_images[:keep], len(pil_images) > 1)
    return {**self.text_arrays(ids, targets, processed), **images}
