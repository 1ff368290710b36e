"""Shared by the hostile-input tests: a pickle that runs code when it is loaded."""

from __future__ import annotations

import pickle


class Payload:
  """Unpickling this runs ``open(marker, 'w')``: what a tampered pickle file could do."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def pickled_payload(marker) -> bytes:
  """Bytes that create ``marker`` if anything unpickles them."""
  return pickle.dumps({"records": [], "skipped": [], "x": Payload(str(marker))})
