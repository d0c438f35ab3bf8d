"""Training windows against whole crops, on test: the concept benchmark's shipped adapter and full fine-tune as
finetune_lora trains them now (`finetune_lora.patch`) against the same methods trained on whole crops, whose runs
the benchmark set aside when the setting changed. Both are read from bench/results/concept_bench.json: the
current runs from its plan, the whole-crop runs by the job keys an earlier commit's plan gave them.

    python -m bench.window_check --before 9431a71     # the last commit whose plan trained on whole crops

Per concept and pooled: test LPIPS of each, the paired difference (windows - whole crops) on the same test crops
with its 95 % interval over test photos and seeds, the gap closed by each adapter, KID, and the training seconds
to the val-best step (runs timed on one machine). Writes bench/results/window_check.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess

import numpy as np

from bench.common import RESULTS, code_version
from bench.concept_summary import Curves, Resamples, gap_closed, method_runs, paired
from pipeline.core.io import atomic_write_json

BENCH = RESULTS / "concept_bench.json"
OUT = RESULTS / "window_check.json"
METHODS = ("adapter", "full_ft")


def earlier_runs(result: dict, before: dict) -> list[dict]:
    """The runs (current or set aside) that the earlier plan's jobs name, labelled with those jobs."""
    return method_runs({"jobs": before["jobs"], "runs": [*result["runs"], *result.get("set_aside", [])]})


def compare(result: dict, before: dict) -> dict:
    refs = result["references"]
    photos = next(iter(refs.values()))["photos"]
    rs = Resamples(photos)
    now, then = method_runs(result), earlier_runs(result, before)
    per, pooled_curves = {}, {"identity": [], "adapter_now": [], "adapter_then": [], "ft_now": [], "ft_then": []}
    for c in result["concepts"]:
        rows = {
            (label, m): [r for r in runs if r["concept"] == c and r["method"] == m]
            for label, runs in (("windows", now), ("whole", then))
            for m in METHODS
        }
        if not all(rows.values()):
            continue
        seeds = sorted(set.intersection(*({r["seed"] for r in v} for v in rows.values())))
        if not seeds:
            continue
        cv = {k: Curves.of_runs([r for r in v if r["seed"] in seeds]) for k, v in rows.items()}
        ident = Curves({None: refs[c]["identity"]["lpips_test"]})
        entry = {"seeds": seeds}
        for m in METHODS:
            w, h = cv[("windows", m)], cv[("whole", m)]
            entry[m] = {
                "lpips_test": {"windows": float(w.mean().mean()), "whole": float(h.mean().mean())},
                "windows_minus_whole": paired(w, h, rs),
                "kid_test": {
                    label: float(np.mean([r["kid_test"] for r in rows[(label, m)] if r["seed"] in seeds]))
                    for label in ("windows", "whole")
                },
                "seconds_to_best": {
                    label: [r["seconds_to_best"] for r in rows[(label, m)] if r["seed"] in seeds and r.get("machine")]
                    for label in ("windows", "whole")
                },
            }
        entry["gap_closed"] = {
            "windows": gap_closed([ident], [cv[("windows", "adapter")]], [cv[("windows", "full_ft")]], rs),
            "whole": gap_closed([ident], [cv[("whole", "adapter")]], [cv[("whole", "full_ft")]], rs),
        }
        per[c] = entry
        for k, v in (
            ("identity", ident),
            ("adapter_now", cv[("windows", "adapter")]),
            ("adapter_then", cv[("whole", "adapter")]),
            ("ft_now", cv[("windows", "full_ft")]),
            ("ft_then", cv[("whole", "full_ft")]),
        ):
            pooled_curves[k].append(v)
    out = {"concepts": sorted(per), "per_concept": per, "split": "test"}
    if per:
        p = pooled_curves
        out["pooled"] = {
            "gap_closed": {
                "windows": gap_closed(p["identity"], p["adapter_now"], p["ft_now"], rs),
                "whole": gap_closed(p["identity"], p["adapter_then"], p["ft_then"], rs),
            },
            "adapter_windows_minus_whole_lpips": float(
                np.mean([e["adapter"]["windows_minus_whole"]["mean"] for e in per.values()])
            ),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="a commit whose concept_bench.json plan trained on whole crops")
    ap.add_argument("--bench", default=str(BENCH))
    args = ap.parse_args()
    result = json.loads(open(args.bench).read())
    rel = "bench/results/concept_bench.json"
    before = json.loads(subprocess.run(["git", "show", f"{args.before}:{rel}"], capture_output=True, check=True).stdout)
    out = {
        **compare(result, before),
        "whole_crops_plan": args.before,
        "command": f"python -m bench.window_check --before {args.before}",
        "commit": code_version(),
    }
    atomic_write_json(OUT, out)
    print(json.dumps({k: v for k, v in out.items() if k != "per_concept"}, indent=1))
    for c, e in out["per_concept"].items():
        d = e["adapter"]["windows_minus_whole"]
        print(
            f"{c}: adapter {e['adapter']['lpips_test']['windows']:.4f} (windows) vs "
            f"{e['adapter']['lpips_test']['whole']:.4f} (whole), diff {d['mean']:+.4f} "
            f"[{d['ci95']['low']:+.4f}, {d['ci95']['high']:+.4f}], seeds {e['seeds']}"
        )


if __name__ == "__main__":
    main()
