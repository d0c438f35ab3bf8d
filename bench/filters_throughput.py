"""Throughput of the filters teacher (pairs/s) at 256², against the I/O-only baseline of writing the pair.

Run: python -m bench.filters_throughput [--size 256] [--n 32]  ->  bench/results/filters_throughput.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core import assets
from pipeline.core.images import center_crop, load_rgb
from pipeline.core.io import atomic_write_json
from pipeline.data.teachers.filters import FILTERS, apply_filter


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _time(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("bench/results/filters_throughput.json"))
    args = ap.parse_args()
    photos = [Path(e["path"]) for e in assets.cached_photos()][: args.n]
    crops = [center_crop(load_rgb(p), args.size) for p in photos]
    # baseline: what writing a pair costs without any edit (two PNG encodes)
    io_s = _time(lambda: [(_png_bytes(c), _png_bytes(c)) for c in crops])
    rows = {}
    for op in FILTERS:
        edit_s = _time(lambda op=op: [apply_filter(op, c, seed=i) for i, c in enumerate(crops)])
        rows[op] = {
            "pairs_per_s": round(len(crops) / (edit_s + io_s), 1),
            "edit_ms": round(1000 * edit_s / len(crops), 2),
            "edit_vs_io": round(edit_s / io_s, 2),
        }
    result = {
        "size": args.size,
        "n": len(crops),
        "io_ms_per_pair": round(1000 * io_s / len(crops), 2),
        "machine": f"{platform.machine()} {platform.processor() or ''} cores={__import__('os').cpu_count()}",
        "filters": rows,
        "median_pairs_per_s": float(np.median([r["pairs_per_s"] for r in rows.values()])),
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
