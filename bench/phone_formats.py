"""Every phone format of every concept (export_mobile with all of executorch, litert and coreml, which the default
run leaves out: params.yaml, export_mobile.formats), from the default run's models: each file's size, conversion
seconds, parity against torch on test crops (Core ML: its structural check) and latency at 1 and 2 threads beside
the concept's fp32 ONNX model in onnxruntime, in the same run; and the seconds the whole stage took per concept.

Run: python -m bench.phone_formats [--concepts watercolor cartoon winter] [--keep DIR]
     ->  bench/results/phone_formats.json (written after each concept; a rerun keeps the concepts already measured
         at the same code version and params, so an interrupted run resumes; --force remeasures)
Needs `dvc repro` first (the base, the adapters, the pairs and the concepts' ONNX models).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import code_version, machine
from pipeline.config import load_params
from pipeline.core.io import atomic_write_json
from pipeline.deploy.mobile import FORMATS
from pipeline.deploy.package import export_mobile
from pipeline.orchestrate.dvc import stage_paths

OUT = Path("bench/results/phone_formats.json")


def main() -> None:
    params = load_params()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", nargs="+", default=list(params.concepts))
    ap.add_argument("--keep", type=Path, help="also keep the converted files, in DIR/<concept>/")
    ap.add_argument("--force", action="store_true", help="remeasure concepts already in the results file")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    cfg = params.export_mobile.model_copy(update={"formats": list(FORMATS)})
    version = code_version()
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    same = old.get("commit") == version and old.get("config") == cfg.model_dump()
    result = {
        "config": cfg.model_dump(),
        "commit": version,
        "machine": machine(),
        "concepts": dict(old.get("concepts", {})) if same and not args.force else {},
    }
    for concept in args.concepts:
        if concept in result["concepts"]:
            print(f"{concept}: kept from the results file")
            continue
        p = stage_paths("export_mobile", concept)
        with tempfile.TemporaryDirectory() as td:
            out = Path(td) / concept
            t0 = time.perf_counter()
            m = export_mobile(concept, p["base"], p["adapter"], p["pairs"], p["prompts"], p["onnx"], cfg, out)
            m["stage_s"] = round(time.perf_counter() - t0, 1)  # what export_mobile@C costs with every format on
            if args.keep:
                shutil.rmtree(args.keep / concept, ignore_errors=True)
                shutil.copytree(out, args.keep / concept)
        result["concepts"][concept] = m
        atomic_write_json(args.out, result)
        print(f"{concept}: " + ", ".join(f"{k} {v['bytes'] / 1e6:.1f} MB" for k, v in m["files"].items()))


if __name__ == "__main__":
    main()
