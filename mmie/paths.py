"""Paths named by input data, kept inside the folder that holds them.

A captions file, a sharded-weights index or any other file a user may be handed can name
``../x``, an absolute path, or a symlink to elsewhere; a reader opens only what resolves inside
its folder (symlinks followed), so pointing MMIE at a folder never reads outside it.
"""

from __future__ import annotations

import os


def resolve_inside(root: str, name: str) -> tuple[str, bool]:
  """``(real path of root/name, whether it lies inside root)``, symlinks resolved."""
  real_root = os.path.realpath(root)
  real = os.path.realpath(os.path.join(root, name))
  return real, os.path.commonpath([real_root, real]) == real_root
