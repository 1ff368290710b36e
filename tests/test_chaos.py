"""``scripts/chaos.py --runs=1``: one run of each fault at a seeded random moment, resumed,
and bit-identical to the uninterrupted run (the README's table comes from ``--runs=20``).

Slow: about eight minutes on 2 cores (some twenty tiny three-stage runs through ``main.py``,
two of them on two processes).
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_chaos_script_loses_nothing(tmp_path):
  result = subprocess.run([sys.executable, "scripts/chaos.py", "--runs=1",
                           f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800, env={k: v for k, v in os.environ.items()
                                             if k != "XLA_FLAGS"})
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  rows = re.findall(r"^\| (\w+)[^|]* \| (\d+) \| .* \| (\d+) \|$", result.stdout, re.M)
  assert [name for name, _, _ in rows] == ["sigkill", "sigterm", "torn", "torn",
                                           "another_config", "disk_full", "nan_skip",
                                           "nan_stop", "two_process"], result.stdout
  assert all(int(runs) >= 1 for _, runs, _ in rows), result.stdout
  assert all(lost == "0" for _, _, lost in rows), result.stdout
  assert re.search(r"lost: 0\.$", result.stdout, re.M)
