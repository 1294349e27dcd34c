"""How long ``nndiag report`` takes on a big run: 200 layers x 10,000 logging steps (issue #4: < 10 s).

The run store is synthesised directly (no training): per layer ``act_mean``, ``act_std``,
``dead_frac``, ``nonfinite``; per weight ``grad_norm``, ``weight_norm``, ``update_ratio``; run-wide
``loss``, ``grad_norm_total``, ``lr``: about 14 million rows, as the real writer lays them out.

Usage: python benchmarks/report_speed.py [--layers 200] [--steps 10000] [--keep DIR]
Prints the store size, the build time of the store, and the wall time of ``nndiag report``
(load, pictures, HTML + Markdown + JSON) measured three times.
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nndiag.store.schema import DDL, STORE_FILENAME
from nndiag.store.writer import RunStore


def synthesise(run_dir: Path, layers: int, steps: int) -> int:
    RunStore(
        run_dir, {"framework": "benchmark", "facts": {"forward_order": [f"blocks.{i}" for i in range(layers)]}}
    ).close("finished")
    conn = sqlite3.connect(run_dir / STORE_FILENAME)
    conn.executescript(DDL)
    series: list[tuple[str, str]] = [("", "loss"), ("", "grad_norm_total"), ("", "lr")]
    for i in range(layers):
        series += [(f"blocks.{i}", s) for s in ("act_mean", "act_std", "dead_frac", "nonfinite")]
        series += [(f"blocks.{i}.weight", s) for s in ("grad_norm", "weight_norm", "update_ratio")]
    conn.executemany(
        "INSERT INTO series (id, layer, stat) VALUES (?, ?, ?)", [(k + 1, *s) for k, s in enumerate(series)]
    )
    rng = np.random.default_rng(0)
    depth_decay = 0.97 ** np.arange(layers)
    rows = 0
    for step in range(steps):
        vals = [2.3 * np.exp(-step / 3000) + 0.05 * rng.random(), 1.0 + rng.random(), 1e-3]
        for i in range(layers):
            vals += [0.01 * rng.standard_normal(), depth_decay[i] * (1 + 0.1 * rng.random()), 0.1 * rng.random(), 0.0]
            vals += [1e-2 * depth_decay[i], 5.0, 1e-3 * (1 + rng.random())]
        conn.executemany(
            "INSERT INTO scalars (step, series, value) VALUES (?, ?, ?)",
            [(step, k + 1, float(v)) for k, v in enumerate(vals)],
        )
        rows += len(vals)
    conn.commit()
    conn.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--keep", help="build the store here (reused when it exists)")
    args = ap.parse_args()
    run_dir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp()) / "run"
    if not (run_dir / STORE_FILENAME).exists() or not args.keep:
        t0 = time.perf_counter()
        rows = synthesise(run_dir, args.layers, args.steps)
        print(f"synthesised {rows:,} rows in {time.perf_counter() - t0:.0f} s")
    size = (run_dir / STORE_FILENAME).stat().st_size / 2**20
    print(f"machine: {platform.machine()}, {platform.system()}, python {platform.python_version()}")
    print(f"store: {args.layers} layers x {args.steps} logging steps, {size:.0f} MiB")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nndiag.cli", "report", str(run_dir)], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    print(f"nndiag report (html, md, json; new process each time): {', '.join(f'{t:.1f} s' for t in times)}")
    print(f"median {sorted(times)[1]:.1f} s (target: < 10 s)")


if __name__ == "__main__":
    main()
