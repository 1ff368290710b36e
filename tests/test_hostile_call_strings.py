"""Call-strings (``data.name``, ``loss.name``, ``task``, ``data.augment.views``, ...) are
literals only: a config or command line can name a registered factory and give it literal
arguments, and nothing else. Every attempt below would create a marker file if any code in it
ran; each must be refused with a ConfigError (a ValueError) and leave no marker.
"""

from __future__ import annotations

import pytest

import jax

from mmie import config as config_lib
from mmie import sharding
from mmie.configs import clip
from mmie.data import sources
from mmie.registry import parse_call
from mmie.train import setup

MESH = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])


def _attempts(marker: str) -> list[str]:
  run = f"__import__('os').system('touch {marker}')"
  return [
      run,                                           # A call of a call: not a plain name.
      f"clip(temperature={run})",                    # Code as an argument.
      f"clip(temperature=open('{marker}', 'w'))",
      "os.system('true')",                           # Attribute access as the factory.
      "clip(temperature=().__class__)",              # Attribute access in an argument.
      "clip(temperature=(lambda: 0.1)())",           # A lambda.
      "clip(temperature=lambda: 0.1)",
      "clip(temperature=f'{0.1}')",                  # An f-string (evaluates expressions).
      f"clip(temperature=[open('{marker}', 'w') for _ in ()])",  # A comprehension.
      "clip(**{'temperature': 0.1})",                # ** expansion.
      f"clip(*[open('{marker}', 'w')])",             # * expansion of code.
      f"clip(temperature=(x := open('{marker}', 'w')))",  # An assignment expression.
      "clip(temperature=1 if True else 2)",          # A conditional expression.
      f"clip; open('{marker}', 'w')",                # A second statement.
      "clip(temperature=__builtins__)",              # A name that is not a literal.
  ]


def _refused(fn, text: str, marker) -> None:
  with pytest.raises(ValueError):
    fn(text)
  assert not marker.exists(), f"code ran from {text!r}"


def test_parse_call_accepts_only_literals(tmp_path):
  marker = tmp_path / "code_ran"
  for text in _attempts(str(marker)):
    _refused(parse_call, text, marker)


def test_data_mixtures_accept_only_call_strings_and_number_weights(tmp_path):
  marker = tmp_path / "code_ran"

  def parse(text):
    for term, _ in sources.parse_mixture(text):
      parse_call(term)

  for text in _attempts(str(marker)):
    _refused(parse, f"emoji + {text}", marker)
  _refused(parse, f"emoji * __import__('os').system('touch {marker}')", marker)
  _refused(parse, "emoji * (lambda: 2)()", marker)


@pytest.mark.parametrize("key", ["loss.name", "data.name", "task", "data.augment.views"])
def test_config_call_strings_refuse_code_before_anything_runs(key, tmp_path):
  marker = tmp_path / "code_ran"

  def validate(text):
    config = clip.get_config("tiny")
    section, _, leaf = key.rpartition(".")
    node = config
    for part in section.split(".") if section else ():
      node = node[part]
    node[leaf] = text
    # The whole up-front check of a run (what main.py does before anything is prepared or
    # compiled): the schema, then the task, data, loss and evaluators, traced by shape only.
    setup.build_run(config_lib.validate(config), mesh=MESH)

  for text in _attempts(str(marker)):
    with pytest.raises(config_lib.ConfigError):
      validate(text)
    assert not marker.exists(), f"code ran from {key}={text!r}"
