"""Checks one work unit of raw items: decodable image, usable captions; writes a chunk file.

Runs in worker threads (pillow and hashlib release the GIL). Every item ends either as
a clean record (RGB image re-encoded only when needed, normalised captions, a pixel
digest for de-duplication) or as a skip with its reason and origin, so that nothing bad
reaches training and nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import threading
import warnings
from typing import Any

import msgpack
import numpy as np
from PIL import Image

from mmie.data import readers

# Skip reasons, in report order. 'duplicate' is decided later, across all units.
CORRUPT, EMPTY, OVERLONG, DUPLICATE, UNREADABLE = (
    "corrupt_image", "empty_caption", "overlong_caption", "duplicate", "unreadable_source")
# Decided by the reader.
OUTSIDE, BAD_ROW, BAD_CAPTION = readers.OUTSIDE_FOLDER, readers.BAD_ROW, readers.BAD_CAPTION
REASONS = (CORRUPT, EMPTY, OVERLONG, DUPLICATE, UNREADABLE, OUTSIDE, BAD_ROW, BAD_CAPTION)


@dataclasses.dataclass(frozen=True)
class Limits:
  """What a kept example must satisfy, and how images are normalised at preparation."""

  max_caption_chars: int = 1000  # Longer captions are dropped (an image needs >= 1 left).
  max_size: int = 256  # Shorter side downscaled to this (0 keeps the original size).


class _Skip(Exception):
  """An item that cannot be kept: ``args = (reason, detail)``."""


def _to_rgb(image: Image.Image) -> Image.Image:
  """Any mode -> RGB; transparency is composited on white (as the emoji set)."""
  if image.mode == "RGB":
    return image
  if image.mode.startswith("I;16") or image.mode in ("I", "F"):
    # 16-bit (and 32-bit integer / float) greyscale: PIL's convert would clip every value
    # above 255 to white. 0..65535 maps onto 0..255 (x / 257); wider types clip first.
    wide = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
    return Image.fromarray((wide / 257.0).round().astype(np.uint8)).convert("RGB")
  if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
  return image.convert("RGB")


def _decode(data: bytes | np.ndarray | None) -> tuple[Image.Image, str]:
  """Decoded RGB image and its source format, or ``_Skip(corrupt_image, why)``."""
  if data is None:
    raise _Skip(CORRUPT, "missing file")
  if isinstance(data, np.ndarray):
    if data.dtype != np.uint8 or data.ndim not in (2, 3) or 0 in data.shape:
      raise _Skip(CORRUPT, f"pixels must be non-empty uint8 [H, W(, C)], got {data.dtype} {data.shape}")
    return _to_rgb(Image.fromarray(data.squeeze(-1) if data.ndim == 3 and data.shape[-1] == 1 else data)), "PNG"
  if len(data) == 0:
    raise _Skip(CORRUPT, "zero-size file")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as image:
        image.load()  # Truncated files fail here, not at open.
        fmt = image.format or ""
        rgb = _to_rgb(image)
  except Image.UnidentifiedImageError:
    raise _Skip(CORRUPT, "not a recognised image format") from None
  except Exception as e:  # pylint: disable=broad-except  Any decoder failure is a corrupt image.
    raise _Skip(CORRUPT, f"{type(e).__name__}: {e}") from None
  if rgb.width == 0 or rgb.height == 0:
    raise _Skip(CORRUPT, "zero-size image")
  return rgb, fmt


def _encoded(data: Any, rgb: Image.Image, fmt: str, resized: bool) -> bytes:
  """Keeps original JPEG/PNG RGB bytes untouched; re-encodes anything converted or resized."""
  if isinstance(data, bytes) and not resized and fmt in ("JPEG", "PNG"):
    with Image.open(io.BytesIO(data)) as original:
      if original.mode == "RGB":
        return data
  buffer = io.BytesIO()
  if fmt in ("JPEG", "WEBP"):
    rgb.save(buffer, format="JPEG", quality=95)
  else:
    rgb.save(buffer, format="PNG")
  return buffer.getvalue()


def _captions(captions: tuple[str, ...], limits: Limits) -> tuple[list[str], int]:
  """Whitespace-normalised non-empty captions within the length limit, and how many dropped."""
  cleaned = [" ".join(str(c).split()) for c in captions]
  nonempty = [c for c in cleaned if c]
  if not nonempty:
    raise _Skip(EMPTY, "no non-empty caption")
  kept = [c for c in nonempty if len(c) <= limits.max_caption_chars]
  if not kept:
    longest = max(len(c) for c in nonempty)
    raise _Skip(OVERLONG, f"{longest} characters > max_caption_chars={limits.max_caption_chars}")
  return kept, len(cleaned) - len(kept)


def check_item(item: readers.RawItem, limits: Limits) -> dict[str, Any]:
  """A clean record for ``item``, or raises ``_Skip``."""
  if item.skip:
    raise _Skip(*item.skip)
  captions, dropped = _captions(item.captions, limits)
  rgb, fmt = _decode(item.image)
  pixels = np.asarray(rgb)
  digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
  resized = bool(limits.max_size) and min(rgb.size) > limits.max_size
  if resized:
    scale = limits.max_size / min(rgb.size)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
  return {"key": item.key, "origin": item.origin, "image": _encoded(item.image, rgb, fmt, resized),
          "captions": captions, "captions_dropped": dropped, "label": item.label,
          "group": item.group or item.key, "split": item.split, "digest": digest}


DRAFT_SIDE = 32  # A streamed JPEG is checked by decoding it at its smallest DCT scale.


def check_streamed(item: readers.RawItem, limits: Limits
                   ) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
  """``(record, None)`` for a streamed sample that may train, else ``(None, (reason, why))``.

  The checks of :func:`check_item` that need no second pass over the data: the reader's own
  verdict, the captions, and a full decode of the image (JPEGs at 1/8 scale, where the whole
  entropy-coded stream is still read, so truncation and corruption still fail). The image
  stays as stored; duplicates are not looked for (that needs the whole set first).
  """
  try:
    if item.skip:
      raise _Skip(*item.skip)
    captions, _ = _captions(item.captions, limits)
    if not isinstance(item.image, bytes):
      raise _Skip(CORRUPT, "missing image file")
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(item.image)) as image:
          image.draft("RGB", (DRAFT_SIDE, DRAFT_SIDE))
          image.load()
          if image.width == 0 or image.height == 0:
            raise _Skip(CORRUPT, "zero-size image")
    except _Skip:
      raise
    except Image.UnidentifiedImageError:
      raise _Skip(CORRUPT, "not a recognised image format") from None
    except Exception as e:  # pylint: disable=broad-except  Any decoder failure is corrupt.
      raise _Skip(CORRUPT, f"{type(e).__name__}: {e}") from None
  except _Skip as skip:
    return None, (skip.args[0], skip.args[1])
  return {"image": item.image, "captions": captions, "label": item.label}, None


def process_unit(reader: Any, unit: str, limits: Limits, out_path: str) -> dict[str, int]:
  """Validates every item of ``unit`` and writes ``{records, skipped}`` to ``out_path``.

  The write is atomic (temporary file + rename), so an interrupted preparation resumes by
  skipping the units whose chunk file exists. A reader failing mid-unit (a truncated tar)
  keeps the items read so far and records the failure as ``unreadable_source``.
  """
  records, skipped = [], []
  try:
    for item in reader.read(unit):
      try:
        records.append(check_item(item, limits))
      except _Skip as skip:
        skipped.append((skip.args[0], item.origin, skip.args[1]))
  except Exception as e:  # pylint: disable=broad-except  A broken unit must not stop the run.
    skipped.append((UNREADABLE, unit, f"{type(e).__name__}: {e}"))
  tmp = f"{out_path}.tmp{os.getpid()}-{threading.get_ident()}"
  with open(tmp, "wb") as f:
    f.write(msgpack.packb({"unit": unit, "records": records, "skipped": skipped},
                          use_bin_type=True, default=_plain))
  os.replace(tmp, out_path)
  return {"records": len(records), "skipped": len(skipped)}


def _plain(value: Any) -> Any:
  """numpy scalars (an IDX label) as Python numbers, the only non-msgpack values a record has."""
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"cannot store {type(value).__name__} in a chunk file.")


def read_chunk(path: str) -> dict[str, Any]:
  """A chunk file written by :func:`process_unit`: msgpack, which holds data and never code
  (unlike pickle), since a prepared directory may come from someone else."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    chunk = msgpack.unpackb(data, raw=False)
  except (ValueError, msgpack.UnpackException) as e:
    chunk = e
  if not (isinstance(chunk, dict) and {"records", "skipped"} <= set(chunk)):
    raise ValueError(f"{path} is not a chunk file of mmie.data.prepare (msgpack with records and"
                     " skipped): delete it, or its work/ folder, and prepare again.")
  return chunk
