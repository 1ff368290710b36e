"""Preset arguments of a config file: ``--config=configs/clip.py:b16,batch=32768,fsdp=16``.

The part after the colon is a preset name, then ``key=value`` arguments of that preset. Each
argument's type is its default's (int, float, bool or str), so ``batch=32k`` or ``remat=maybe``
fails at once with the argument named, before any config key is filled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _convert(where: str, key: str, text: str, default: Any) -> Any:
  kind = type(default)
  try:
    if kind is bool:
      if text.lower() not in _TRUE + _FALSE:
        raise ValueError(text)
      return text.lower() in _TRUE
    return kind(text)
  except ValueError:
    raise ValueError(f"{where}: preset argument {key}={text!r} is not of type {kind.__name__}"
                     f" (default {default!r}).") from None


def parse(arg: str | None, where: str, presets: Mapping[str, Mapping[str, Any]],
          default: str = "default") -> tuple[str, dict[str, Any]]:
  """``'b16,batch=4096'`` -> ``('b16', {every argument of b16, batch=4096})``.

  ``presets`` maps each preset name to its arguments' defaults (``{}``: it takes none).
  """
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  name = parts[0] if parts and "=" not in parts[0] else default
  given = parts[1:] if parts and "=" not in parts[0] else parts
  if name not in presets:
    raise ValueError(f"{where}: unknown preset {name!r}; choose one of {sorted(presets)}.")
  defaults = presets[name]
  values = dict(defaults)
  for item in given:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep:
      raise ValueError(f"{where}: preset argument {item!r} is not key=value.")
    if key not in defaults:
      allowed = sorted(defaults) or "none"
      raise ValueError(f"{where}: preset {name!r} has no argument {key!r}; it takes {allowed}.")
    values[key] = _convert(where, key, text.strip(), defaults[key])
  return name, values

