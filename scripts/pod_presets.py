"""Do the pod presets fit? Each one AOT-compiled for 64 and 256 chips, from shapes alone.

    python scripts/pod_presets.py [--presets=clip:b16,clip:l14,siglip:so400m]
                                  [--devices=64,256] [--hbm_gib=16]

For every preset and device count it runs ``python -m mmie.train.aot`` in a fresh process (the
fake device count is fixed when JAX starts) and prints one table: parameters, the mesh, the
per-device batch, and XLA's per-device bytes (the sharded state, temporaries, estimated peak),
whether that peak fits ``--hbm_gib`` (16 GiB: a TPU v4 or v5e chip), and the compile time.
The presets' own arguments apply (``configs/clip.py``: batch 32,768, fsdp 8, data the rest);
``--args=batch=65536,fsdp=16`` adds to each. docs/scaling.md has the table this prints.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2 ** 30


def aot_report(config: str, devices: int, timeout: float) -> dict:
  """One ``mmie.train.aot`` run's JSON report, or ``{"error": why}``."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "report.json")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    try:
      result = subprocess.run([sys.executable, "-m", "mmie.train.aot", f"--config={config}",
                               f"--devices={devices}", f"--json={out}"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
      return {"error": f"compile took over {timeout:.0f} s"}
    if result.returncode:
      lines = (result.stderr.strip() or result.stdout.strip()).splitlines() or ["?"]
      return {"error": lines[-1][:160]}
    with open(out) as f:
      return json.load(f)


def row(name: str, devices: int, report: dict, hbm_gib: float) -> str:
  if "error" in report:
    return f"| {name} | {devices} | failed: {report['error']} |" + " |" * 8
  stage = max(report["stages"], key=lambda s: s["peak_bytes"])
  mesh = " ".join(f"{k}={v}" for k, v in report["mesh"].items() if v > 1)
  peak = stage["peak_bytes"] / GIB
  return (f"| {name} | {devices} | {mesh} | {report['num_params'] / 1e6:,.0f}M |"
          f" {report['batch_size']:,} ({report['per_device_batch']}) |"
          f" {stage['state_bytes'] / GIB:.2f} | {stage['temp_bytes'] / GIB:.2f} | {peak:.2f} |"
          f" {'yes' if peak <= hbm_gib else 'no'} | {stage['compile_seconds']:.0f} |")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--presets", default="clip:b16,clip:l14,siglip:so400m",
                      help="config:preset entries (configs/NAME.py).")
  parser.add_argument("--devices", default="64,256", help="Device counts.")
  parser.add_argument("--args", default="", help="Preset arguments added to each preset.")
  parser.add_argument("--hbm_gib", type=float, default=16.0, help="Memory per chip, GiB.")
  parser.add_argument("--timeout", type=float, default=1800.0, help="Per compile, seconds.")
  args = parser.parse_args(argv)
  print(f"| preset | chips | mesh | params | batch (per shard) | state GiB | temp GiB |"
        f" est. peak GiB | fits {args.hbm_gib:g} GiB | compile s |\n" + "|---" * 10 + "|")
  failed = 0
  for entry in args.presets.split(","):
    config_name, _, preset = entry.partition(":")
    spec = f"configs/{config_name}.py:{preset}" + (f",{args.args}" if args.args else "")
    for devices in (int(d) for d in args.devices.split(",")):
      report = aot_report(spec, devices, args.timeout)
      failed += "error" in report
      print(row(f"{config_name} {preset}", devices, report, args.hbm_gib), flush=True)
  print("\nPer chip. state = params + AdamW moments (float32) + loss state, as sharded; temp"
        " is the CPU compiler's (indicative for TPU/GPU); est. peak = arguments + outputs -"
        " donated + temp + code.")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
