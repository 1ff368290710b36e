"""A full disk, told plainly: which write failed, which checkpoint is intact, what to do.

A training run writes checkpoints (orbax, through TensorStore), ``metrics.jsonl``,
TensorBoard events, ``config.json`` and the tokenizer. When the disk fills (or a quota or a
file-size limit is hit) each of these fails in its own way: Python raises ``OSError`` with
``ENOSPC`` / ``EDQUOT`` / ``EFBIG``, while TensorStore's errors reach orbax as ``ValueError``
text ending in ``[os_error_code='28']``, often from a background thread and only at the next
save. :func:`out_of_space` recognises all of them; :class:`StorageFullError` is the one error
the run stops with, naming the newest checkpoint that is complete (orbax commits a step by
renaming its temporary directory, so a step that is listed is whole).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator

# No space on the device, over a disk quota, over the process's file-size limit.
OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_TENSORSTORE_CODE = re.compile(r"os_error_code='(\d+)'")
# An absolute path as error texts quote it: starting a word (not ``tensorstore/util/x.cc``, a
# source location), ending before a quote, a colon or an escaping backslash.
_PATH = re.compile(r"(?<![\w.\\/-])(/[^\s\"':\\]+)")


class StorageFullError(OSError):
  """The run stopped because a write failed for lack of space; nothing committed was lost."""


def causes(error: BaseException | None) -> Iterator[BaseException]:
  """``error``, then the errors it was raised from or during, oldest last."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def out_of_space(error: BaseException) -> bool:
  """Whether ``error`` (or one it was raised from) is a write that failed for lack of space."""
  for e in causes(error):
    if isinstance(e, OSError) and e.errno in OUT_OF_SPACE_ERRNOS:
      return True
    codes = {int(c) for c in _TENSORSTORE_CODE.findall(str(e))}
    if codes & OUT_OF_SPACE_ERRNOS:
      return True
  return False


def _failed_path(error: BaseException, workdir: str) -> str:
  """The file whose write failed: the OS error's own, else the last workdir path in a text.

  Texts are only searched for paths inside the workdir: an error's context chain can carry
  other paths (a source location, an escaped fragment of JSON) that no run ever wrote.
  """
  root = os.path.abspath(workdir)
  for e in causes(error):
    if isinstance(e, OSError) and e.filename:
      return str(e.filename)
    inside = [p for p in _PATH.findall(str(e))
              if os.path.commonpath([root, os.path.abspath(p)]) == root]
    if inside:
      return inside[-1]
  return "a file in the workdir"


def committed_steps(checkpoint_dir: str) -> list[int]:
  """The steps whose checkpoints were fully written (orbax's temporary directories excluded)."""
  if not os.path.isdir(checkpoint_dir):
    return []
  return sorted(int(d) for d in os.listdir(checkpoint_dir) if d.isdigit())


def full_error(error: BaseException, checkpoint_dir: str) -> StorageFullError:
  """The one-line error a run stops with when ``error`` is :func:`out_of_space`.

  ``checkpoint_dir`` is the run's ``<workdir>/checkpoints``; the failed write is named only
  from the OS error or from a path inside the workdir.
  """
  cause = next((e for e in causes(error) if isinstance(e, OSError) and e.errno), None)
  reason = os.strerror(cause.errno) if cause is not None else "no space left"
  if cause is None:
    codes = [int(c) for c in _TENSORSTORE_CODE.findall(str(error))]
    reason = os.strerror(codes[0]) if codes else reason
  steps = committed_steps(checkpoint_dir)
  kept = (f"the newest complete checkpoint, step {steps[-1]}, is intact (checkpoints on disk:"
          f" steps {steps}); free space, then re-run the same command to resume from it"
          if steps else "no checkpoint had been completed yet; free space, then re-run the"
          " same command to start again")
  return StorageFullError(
      errno.ENOSPC, f"Out of disk space (or over a quota or file-size limit: {reason}) while"
      f" writing {_failed_path(error, os.path.dirname(checkpoint_dir))}: {kept}.")

