"""Call-strings such as ``"memory_queue(size=4096)"``: the config's way of naming a factory.

Generic on purpose (python literal arguments only, parsed with `ast`, never evaluated), so
that any config-edge registry can use it. `Registry` resolves a call-string against
explicitly registered factories, and fails with the names that exist or the signature the
factory accepts.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, NamedTuple, TypeVar

from mmie.schema import suggestion

T = TypeVar("T")


class Call(NamedTuple):
  """A parsed call-string: ``name(*args, **kwargs)`` with literal arguments."""

  name: str
  args: tuple[Any, ...]
  kwargs: dict[str, Any]


def parse_call(text: str) -> Call:
  """Parses ``"name"`` or ``"name(1, key='v', sizes=(2, 3))"``; arguments must be literals."""
  if not isinstance(text, str) or not text.strip():
    raise ValueError(f"expected a call-string such as \"name\" or \"name(key=value)\", "
                     f"got {text!r}.")
  try:
    node = ast.parse(text.strip(), mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"cannot parse call-string {text!r}: {e.msg}. Expected \"name\" or "
                     f"\"name(key=value, ...)\" with python literal values.") from None
  if isinstance(node, ast.Name):
    return Call(node.id, (), {})
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
    raise ValueError(f"call-string {text!r} must be a plain name or a call of a plain name, "
                     f"e.g. \"memory_queue(size=4096)\".")
  args = tuple(_literal(a, text) for a in node.args)
  kwargs = {}
  for kw in node.keywords:
    if kw.arg is None:
      raise ValueError(f"call-string {text!r}: **kwargs expansion is not allowed.")
    kwargs[kw.arg] = _literal(kw.value, text)
  return Call(node.func.id, args, kwargs)


def _literal(node: ast.AST, text: str) -> Any:
  try:
    return ast.literal_eval(node)
  except ValueError:
    raise ValueError(f"call-string {text!r}: argument {ast.unparse(node)!r} is not a python "
                     f"literal (numbers, strings, tuples, lists, dicts, True/False/None)."
                     ) from None


class Registry(Generic[T]):
  """Names -> factories, filled by explicit `register` calls at import of the owning module."""

  def __init__(self, kind: str):
    self.kind = kind
    self._factories: dict[str, Callable[..., T]] = {}

  def register(self, name: str, factory: Callable[..., T]) -> Callable[..., T]:
    if name in self._factories:
      raise ValueError(f"{self.kind} {name!r} is registered twice.")
    self._factories[name] = factory
    return factory

  def __contains__(self, name: str) -> bool:
    return name in self._factories

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._factories))

  def get(self, name: str) -> Callable[..., T]:
    """The factory called ``name``; an unknown name lists what exists and the closest match."""
    if name not in self._factories:
      raise KeyError(f"unknown {self.kind} {name!r}.{suggestion(name, self._factories)} Known {self.kind}s: "
                     f"{', '.join(sorted(self._factories))}.")
    return self._factories[name]

  def bind(self, text: str, **extra: Any) -> tuple[str, Callable[..., T], dict[str, Any]]:
    """Resolves ``text`` to ``(name, factory, checked keyword arguments)`` without calling it."""
    call = parse_call(text)
    factory = self.get(call.name)
    kwargs = bind_arguments(factory, call.args, {**call.kwargs, **extra},
                            what=f"{self.kind} {call.name!r}")
    return call.name, factory, kwargs

  def build(self, text: str, **extra: Any) -> T:
    """Parses ``text`` and calls the factory with its arguments (plus ``extra``)."""
    _, factory, kwargs = self.bind(text, **extra)
    return factory(**kwargs)


def bind_arguments(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
                   *, what: str) -> dict[str, Any]:
  """Checks ``args``/``kwargs`` against ``fn``'s signature; returns them all as keywords."""
  sig = inspect.signature(fn)
  try:
    bound = sig.bind_partial(*args, **kwargs)
  except TypeError as e:
    raise TypeError(f"{what}: {e}. It accepts {describe_signature(fn)}.") from None
  return dict(bound.arguments)


def describe_signature(fn: Callable[..., Any]) -> str:
  """``"(size=4096, inputs=('image_emb', 'text_emb'))"``: names and defaults, no annotations."""
  parts = []
  star_done = False
  for p in inspect.signature(fn).parameters.values():
    if p.kind == p.KEYWORD_ONLY and not star_done:
      parts.append("*")
      star_done = True
    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
      star_done = star_done or p.kind == p.VAR_POSITIONAL
      parts.append(("*" if p.kind == p.VAR_POSITIONAL else "**") + p.name)
      continue
    parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
  return "(" + ", ".join(parts) + ")"
