"""Where a CLIP train step's time goes, op by op: a per-category table from a profiler trace.

    python scripts/profile_step.py --arch=cpu,default --batch=128 [--impl=mmie,hf_flax] [--top=20]

Each implementation (``scripts/benchmark.py``'s: mmie's real train step, HF's FlaxCLIPModel
with the same loss and optimizer) is compiled, warmed up, and run for ``--steps`` steps under
``jax.profiler.trace``. XLA:CPU's runtime records one trace event per executed HLO instruction
(a fusion, a library matmul, a copy); each is looked up in the compiled HLO and put in one
category from its ``op_name`` metadata (the JAX name stack: module path and named scopes such
as ``loss``, ``optimizer``, ``nonfinite_guard``, ``metrics``) and what it computes. The table
gives milliseconds per step per category, summed over events: the runtime runs independent
instructions on several threads at once, so the sum can exceed the step's wall time, which is
printed beside it. Control-flow containers (``conditional``, ``while``, ``call``) are left out,
their bodies' instructions are counted. ``--top`` lists the slowest instructions.

A second table counts the optimised HLO itself, what XLA compile time grows with: the
instructions and fusions of each implementation by the named scope they come from (a
fusion belongs to the scope of the first instruction it fuses; ``unnamed`` are parameters,
tuples and constants), beside the measured compile seconds.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any, Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

import bench_models  # noqa: E402  (scripts/bench_models.py: the same models and optimizer)
import benchmark  # noqa: E402  (scripts/benchmark.py: its flags)

# --arch, --batch, --steps and --warmup are scripts/benchmark.py's flags (imported with it).
_IMPL = flags.DEFINE_list("impl", ["mmie"], "mmie and/or hf_flax (JAX implementations only).")
_TOP = flags.DEFINE_integer("top", 0, "Also list the N slowest HLO instructions.")

CONTAINERS = ("conditional", "while", "call")
# (category, pattern on op_name) in priority order: the first that matches wins. Scopes first
# (they name what the code meant), then model parts by module name, mmie's and HF's alike.
SCOPE_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("optimizer update", r"/optimizer/"),
    ("non-finite guard", r"/nonfinite_guard/"),
    ("metrics (norms)", r"/metrics/"),
    ("loss", r"/loss/"),
)
MODEL_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("attention core (QK, softmax, AV)",
     r"attention/vmap|dot_product_attention|self_attn/(?!(q|k|v|out)_proj)|BTNH|BNTS"),
    ("layer norm", r"_norm|ln_pre|ln_post|layer_norm|layernorm|final_norm|pre_layrnorm"),
    ("GELU", r"erf|gelu|/mlp/(mul|add|integer_pow|tanh)"),
    ("embeddings and pooling", r"embed|patch|position|token|pool|projection|take|gather"),
)
MATMUL_OPCODES = ("dot", "convolution", "custom-call")


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One HLO instruction of the compiled program: what it is and where it came from."""

  name: str
  opcode: str
  op_names: tuple[str, ...]  # Its own op_name, or those of the instructions it fuses.
  has_matmul: bool


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+(?:\[[^\]]*\])?(?:\{[^}]*\})?"
                          r"\s+([\w\-]+)\(")
_TUPLE_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\(.*?\)\s+([\w\-]+)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s+[\(\{].*\{\s*$")
_OP_NAME = re.compile(r'op_name="([^"]+)"')
_CALLS = re.compile(r"(?:calls|to_apply)=%?([\w.\-]+)")


def parse_hlo(text: str) -> dict[str, Instruction]:
  """Instruction name -> Instruction, for every instruction of the HLO module ``text``;
  a fusion's op_names and matmul flag are those of the computation it calls."""
  computations: dict[str, list[tuple[str, str, str | None, str | None]]] = {}
  current = None
  for line in text.splitlines():
    if current is None or line.rstrip().endswith("{") and "=" not in line.split("{")[0]:
      match = _COMPUTATION.match(line)
      if match:
        current = computations.setdefault(match.group(1), [])
        continue
    if current is None:
      continue
    match = _INSTRUCTION.match(line) or _TUPLE_INSTRUCTION.match(line)
    if not match:
      continue
    op_name = _OP_NAME.search(line)
    calls = _CALLS.search(line)
    current.append((match.group(1), match.group(2), op_name.group(1) if op_name else None,
                    calls.group(1) if calls else None))

  def fused(computation: str, seen: frozenset[str] = frozenset()) -> tuple[list[str], bool]:
    names, matmul = [], False
    for _, opcode, op_name, calls in computations.get(computation, []):
      matmul |= opcode in MATMUL_OPCODES
      if op_name:
        names.append(op_name)
      if calls and opcode == "fusion" and calls not in seen:
        inner, inner_matmul = fused(calls, seen | {calls})
        names += inner
        matmul |= inner_matmul
    return names, matmul

  table = {}
  for instructions in computations.values():
    for name, opcode, op_name, calls in instructions:
      names, matmul = ([op_name] if op_name else []), opcode in MATMUL_OPCODES
      if opcode == "fusion" and calls:
        inner, matmul = fused(calls)
        names = names + inner
      table[name] = Instruction(name, opcode, tuple(names), matmul)
  return table


def categorise(instruction: Instruction | None, event_name: str) -> str:
  """One category per executed instruction: scope, then matmul, then model part, then kind."""
  if instruction is None:
    return "unmatched runtime events"
  names = instruction.op_names
  for category, pattern in SCOPE_CATEGORIES:
    if any(re.search(pattern, n) for n in names):
      return category
  if instruction.has_matmul:
    if any(re.search(MODEL_CATEGORIES[0][1], n) for n in names):
      return MODEL_CATEGORIES[0][0]
    return "matmuls (projections, MLP, patch embedding)"
  for category, pattern in MODEL_CATEGORIES:
    if any(re.search(pattern, n, re.IGNORECASE) for n in names):
      return category
  if "transpose" in event_name or "copy" in event_name or instruction.opcode in (
      "transpose", "copy", "bitcast", "reshape"):
    return "transposes and copies"
  if not names:
    return "unnamed (runtime, parameters)"
  return "other elementwise and reductions"


def trace_events(trace_dir: str) -> list[dict[str, Any]]:
  """The complete ('X') events of the newest Perfetto trace under ``trace_dir``."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                           recursive=True))
  if not files:
    raise RuntimeError(f"jax.profiler wrote no perfetto_trace.json.gz under {trace_dir}.")
  with gzip.open(files[-1]) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X"]


@dataclasses.dataclass
class Profile:
  """One implementation's per-category milliseconds per step, and its wall step time."""

  name: str
  step_ms: float
  categories: dict[str, float]
  top: list[tuple[float, str, str]]
  instructions_per_step: float


def prepare(impl_name: str, arch_name: str, batch: int) -> tuple[Any, dict[str, Instruction]]:
  """The implementation's compiled step, warmed up, and its HLO instruction table."""
  variant = bench_models.Variant(impl_name, arch_name, batch)
  timed = bench_models.IMPLS[impl_name](bench_models.ARCHS[arch_name], batch, variant)
  if timed.compiled is None:
    raise app.UsageError(f"--impl={impl_name}: only JAX implementations can be profiled here.")
  for _ in range(benchmark._WARMUP.value):
    timed.step()
  return timed, parse_hlo(timed.compiled.as_text())


def profile(timed: Any, table: dict[str, Instruction]) -> Profile:
  """Traces ``--steps`` steps and sums each executed instruction's time by category."""
  import jax

  steps = benchmark._STEPS.value
  wall = []
  with tempfile.TemporaryDirectory(prefix="mmie-profile-") as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(steps):
        start = time.perf_counter()
        timed.step()
        wall.append(time.perf_counter() - start)
    events = trace_events(trace_dir)
  totals: dict[str, float] = collections.defaultdict(float)
  per_instruction: dict[str, float] = collections.defaultdict(float)
  executed = 0
  for event in events:
    name = event["name"]
    instruction = table.get(name)
    if instruction is None or instruction.opcode in CONTAINERS:
      continue  # Python, runtime and container events; their leaves are counted.
    executed += 1
    ms = event.get("dur", 0) / 1e3 / steps
    totals[categorise(instruction, name)] += ms
    per_instruction[name] += ms
  top = sorted(((ms, name, categorise(table[name], name)) for name, ms in
                per_instruction.items()), reverse=True)[:_TOP.value]
  return Profile(timed.name, 1e3 * statistics.median(wall), dict(totals), top,
                 executed / steps)


def format_table(arch_name: str, batch: int, profiles: list[Profile]) -> str:
  categories = sorted({c for p in profiles for c in p.categories},
                      key=lambda c: -max(p.categories.get(c, 0.0) for p in profiles))
  head = "| category | " + " | ".join(f"{p.name} ms/step | share" for p in profiles) + " |"
  lines = [f"{arch_name} arch, batch {batch}:", "", head,
           "|---|" + "---|---|" * len(profiles)]
  for category in categories:
    cells = []
    for p in profiles:
      ms = p.categories.get(category, 0.0)
      cells.append(f"{ms:.1f} | {100 * ms / max(sum(p.categories.values()), 1e-9):.0f}%")
    lines.append(f"| {category} | " + " | ".join(cells) + " |")
  lines.append("| **sum of instruction times** | " + " | ".join(
      f"{sum(p.categories.values()):.1f} | 100%" for p in profiles) + " |")
  lines.append("| instructions executed per step | " + " | ".join(
      f"{p.instructions_per_step:.0f} | " for p in profiles) + " |")
  lines.append("| **wall step time (median, traced)** | " + " | ".join(
      f"{p.step_ms:.1f} | " for p in profiles) + " |")
  return "\n".join(lines)


def hlo_scope(instruction: Instruction) -> str:
  """The named scope of the step an optimised-HLO instruction comes from, or model/unnamed."""
  if not instruction.op_names:
    return "unnamed (parameters, tuples, constants)"
  for category, pattern in SCOPE_CATEGORIES:
    if re.search(pattern, instruction.op_names[0]):
      return category
  return "model (forward and backward)"


def format_hlo_counts(prepared: list[tuple[Any, dict[str, Instruction]]]) -> str:
  """Instructions and fusions of each compiled step by scope, and its compile seconds."""
  counts = []
  for timed, table in prepared:
    by_scope: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for instruction in table.values():
      cell = by_scope[hlo_scope(instruction)]
      cell[0] += 1
      cell[1] += instruction.opcode == "fusion"
    counts.append((timed, by_scope))
  scopes = sorted({s for _, c in counts for s in c}, key=lambda s: -counts[0][1][s][0])
  lines = ["| scope | " + " | ".join(f"{t.name} instructions | fusions" for t, _ in counts)
           + " |", "|---|" + "---:|---:|" * len(counts)]
  for scope in scopes:
    lines.append(f"| {scope} | " + " | ".join(
        f"{c[scope][0]:,} | {c[scope][1]:,}" for _, c in counts) + " |")
  lines.append("| **all** | " + " | ".join(
      f"{sum(v[0] for v in c.values()):,} | {sum(v[1] for v in c.values()):,}"
      for _, c in counts) + " |")
  lines.append("| compile s (lower + XLA) | " + " | ".join(
      f"{t.compile_seconds:.2f} | " for t, _ in counts) + " |")
  return "\n".join(lines)


def format_top(profile_: Profile) -> Iterable[str]:
  yield f"\nslowest instructions of {profile_.name} (ms/step, category):"
  for ms, name, category in profile_.top:
    yield f"  {ms:8.2f}  {name}  ({category})"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  unknown = [a for a in benchmark._ARCH.value if a not in bench_models.ARCHS]
  if unknown:
    raise app.UsageError(f"--arch: unknown {unknown}; choose from {sorted(bench_models.ARCHS)}.")
  bad = [i for i in _IMPL.value if i not in ("mmie", "hf_flax")]
  if bad:
    raise app.UsageError(f"--impl: {bad} cannot be profiled here; choose mmie and/or hf_flax.")
  for arch_name in benchmark._ARCH.value:
    for batch in (int(b) for b in benchmark._BATCH.value):
      # Every implementation is compiled and warmed up before any is traced, so none is
      # measured while the process is still cold (page faults, thread-pool start-up).
      prepared = [prepare(impl, arch_name, batch) for impl in _IMPL.value]
      profiles = [profile(timed, table) for timed, table in prepared]
      print(format_table(arch_name, batch, profiles), flush=True)
      print("\noptimised HLO by scope:\n\n" + format_hlo_counts(prepared), flush=True)
      for p in profiles:
        if p.top:
          print("\n".join(format_top(p)))
      print()


if __name__ == "__main__":
  app.run(main)
