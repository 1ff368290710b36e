"""Prepare a data source into TFDS array_record shards: parallel, resumable, fully reported.

    python -m mmie.data.prepare --source="folder(path='~/pets')" --out=DIR [--workers=N]

Steps: (1) the reader's work units are validated in parallel worker threads, each into
an atomic chunk file under ``DIR/work/`` (a rerun after an interruption skips the done
units); (2) the chunks are merged in order: exact duplicates (same decoded pixels) are
dropped, each remaining image gets its split from a hash of its group (or the source's own
split); (3) a BPE tokenizer is trained on the training captions; (4) TFDS writes the
shards. ``DIR/report.json`` holds the counts (kept, corrupt image, empty caption,
over-long caption, duplicate, unreadable source) and every skipped file with its reason.

Training prepares the same way on first use, so this command is optional: it is for
preparing ahead of time, on another machine, or into a chosen place.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import os
import shutil
import sys
from typing import Any

from mmie.data import prepared, sources, tokenizer as tokenizer_lib, validate

REPORT_FILE = "report.json"
TOKENIZER_FILE = "tokenizer.json"
LISTED_PER_REASON = 20  # Printed; report.json lists them all.


def _bucket(record: dict[str, Any]) -> float:
  return sources.group_bucket(record["group"])


def _split_of(record: dict[str, Any], validation_fraction: float) -> str:
  if record["split"]:
    return record["split"]
  return "validation" if _bucket(record) < validation_fraction else "train"


def _run_units(reader: Any, units: list[str], limits: validate.Limits, work_dir: str,
               workers: int) -> list[str]:
  """Validates every unit without a chunk file; returns all chunk paths in unit order."""
  os.makedirs(work_dir, exist_ok=True)
  paths = [os.path.join(work_dir, f"unit-{i:06d}-{hashlib.sha256(u.encode()).hexdigest()[:8]}.msgpack")
           for i, u in enumerate(units)]
  todo = [(u, p) for u, p in zip(units, paths) if not os.path.exists(p)]
  workers = min(workers or os.cpu_count() or 1, len(todo))
  if workers <= 1:
    for unit, path in todo:
      validate.process_unit(reader, unit, limits, path)
    return paths
  # Threads, not processes: pillow's codecs and hashlib release the GIL, so decoding and
  # re-encoding run in parallel, without forking a parent that may hold JAX threads or
  # spawning children that re-import the caller's main module.
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = [pool.submit(validate.process_unit, reader, u, limits, p) for u, p in todo]
    for future in concurrent.futures.as_completed(futures):
      future.result()
  return paths


def _merge(chunks: list[str], validation_fraction: float) -> tuple[dict, dict, list[str]]:
  """(kept index per split, report, training captions); first occurrence of a duplicate wins."""
  kept: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
  skipped: dict[str, list[str]] = collections.defaultdict(list)
  first_seen: dict[str, str] = {}
  train_captions: list[str] = []
  captions_dropped = 0
  for chunk_index, path in enumerate(chunks):
    chunk = validate.read_chunk(path)
    for reason, origin, detail in chunk["skipped"]:
      skipped[reason].append(f"{origin}: {detail}")
    for index, record in enumerate(chunk["records"]):
      if record["digest"] in first_seen:
        skipped[validate.DUPLICATE].append(
            f"{record['origin']}: same pixels as {first_seen[record['digest']]}")
        continue
      first_seen[record["digest"]] = record["origin"]
      split = _split_of(record, validation_fraction)
      kept[split].append((chunk_index, index))
      captions_dropped += record["captions_dropped"]
      if split == "train":
        train_captions.extend(record["captions"])
  if validation_fraction > 0 and not kept.get("validation") and len(kept.get("train", [])) > 1:
    _move_lowest_bucket_to_validation(chunks, kept)
    train_captions = None  # Recomputed below without the moved example.
  if train_captions is None:
    train_captions = _captions_of(chunks, kept["train"])
  counts = {"kept": sum(len(v) for v in kept.values()),
            **{reason: len(skipped.get(reason, [])) for reason in validate.REASONS},
            **{f"split_{s}": len(v) for s, v in sorted(kept.items())},
            "captions_dropped": captions_dropped}
  return dict(kept), {"counts": counts, "skipped": dict(skipped)}, train_captions


def _load(chunks: list[str], chunk_index: int) -> list[dict[str, Any]]:
  return validate.read_chunk(chunks[chunk_index])["records"]


def _move_lowest_bucket_to_validation(chunks: list[str], kept: dict) -> None:
  """A tiny set whose hashes all fell in 'train' still gets one validation example."""
  loaded = {c: _load(chunks, c) for c in {c for c, _ in kept["train"]}}
  buckets = [(_bucket(loaded[c][i]), c, i) for c, i in kept["train"] if not loaded[c][i]["split"]]
  if buckets:
    _, chunk, index = min(buckets)
    kept["train"].remove((chunk, index))
    kept["validation"] = [(chunk, index)]


def _captions_of(chunks: list[str], entries: list[tuple[int, int]]) -> list[str]:
  loaded = {c: _load(chunks, c) for c in {c for c, _ in entries}}
  return [c for chunk, index in entries for c in loaded[chunk][index]["captions"]]


def fingerprint_of(reader: Any, limits: validate.Limits, validation_fraction: float,
                   vocab_size: int) -> str:
  """Identifies the inputs and options: an equal fingerprint means the output is current."""
  # The last number versions what preparation does: 2 refuses folder paths outside the folder,
  # 3 skips a shard's undecodable caption instead of reading it with replacement characters.
  text = repr((reader.fingerprint(), repr(reader), limits, validation_fraction, vocab_size, 3))
  return hashlib.sha256(text.encode()).hexdigest()


def prepare(reader: Any, out_dir: str, *, limits: validate.Limits = validate.Limits(),
            validation_fraction: float = 0.1, vocab_size: int = 1024,
            workers: int = 0, keep_work: bool = False) -> dict[str, Any]:
  """Prepares ``reader`` into ``out_dir`` unless it is already current; returns the report."""
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  fingerprint = fingerprint_of(reader, limits, validation_fraction, vocab_size)
  report_path = os.path.join(out_dir, REPORT_FILE)
  builder = prepared.open_builder(out_dir)
  if builder.is_prepared() and builder.info.metadata.get("fingerprint") == fingerprint:
    with open(report_path, encoding="utf-8") as f:
      return json.load(f)
  work_dir = os.path.join(out_dir, "work", fingerprint[:16])
  chunks = _run_units(reader, reader.units(), limits, work_dir, workers)
  kept, report, train_captions = _merge(chunks, validation_fraction)
  if not kept.get("train"):
    raise ValueError(f"No training example survived preparation of {reader!r}: "
                     f"{json.dumps(report['counts'])}. See the skipped list in the report.")
  tokenizer = tokenizer_lib.train_bpe(train_captions, vocab_size)
  tokenizer.save(os.path.join(out_dir, TOKENIZER_FILE))
  metadata = {"fingerprint": fingerprint, "class_names": list(reader.class_names()),
              "source": repr(reader), "templated": bool(getattr(reader, "templates", ()))}
  plan = {"chunks": chunks, "kept": kept, "metadata": metadata}
  builder = prepared.open_builder(out_dir, plan)
  mode = "reuse_cache_if_exists" if builder.is_prepared() else "reuse_dataset_if_exists"
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()  # Our report says what happened; bars only clutter logs.
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode(mode)))
  report = {"source": repr(reader), "out_dir": out_dir, **report}
  with open(report_path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  if not keep_work:
    shutil.rmtree(os.path.join(out_dir, "work"), ignore_errors=True)
  return report


def format_report(report: dict[str, Any]) -> str:
  """Counts, then up to LISTED_PER_REASON skipped files per reason."""
  lines = [f"{report['source']} -> {report['out_dir']}",
           "  " + ", ".join(f"{k}={v}" for k, v in report["counts"].items())]
  for reason, items in report["skipped"].items():
    lines.append(f"  {reason} ({len(items)}):")
    lines.extend(f"    {item}" for item in items[:LISTED_PER_REASON])
    if len(items) > LISTED_PER_REASON:
      lines.append(f"    ... {len(items) - LISTED_PER_REASON} more in {REPORT_FILE}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  """CLI: resolve ``--source`` with the source registry and prepare it into ``--out``."""
  import argparse  # pylint: disable=g-import-not-at-top

  from mmie.data import sources  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog="python -m mmie.data.prepare",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--source", required=True,
                      help="call-string, e.g. \"folder(path='~/pets')\" or \"webdataset(urls="
                      "'shards/{00000..00009}.tar')\" or 'fashion_mnist'")
  parser.add_argument("--out", required=True, help="output directory (a TFDS data_dir)")
  parser.add_argument("--workers", type=int, default=0, help="threads (0: one per CPU)")
  parser.add_argument("--keep-work", action="store_true", help="keep the validated chunks")
  args = parser.parse_args(argv)
  report = sources.prepare_spec(args.source, args.out, workers=args.workers,
                                keep_work=args.keep_work)
  print(format_report(report))


if __name__ == "__main__":
  main(sys.argv[1:])
