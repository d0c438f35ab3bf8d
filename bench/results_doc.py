"""docs/results.md from the committed results files: every table is rendered from one file and names that file,
the command that writes it, and the commit and date of the file's last change (so nothing is typed by hand).

    python -m bench.results_doc            ->  docs/results.md   (run after committing new results)
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from bench.concept_summary import ci_text
from pipeline.core.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def provenance(rel: str, command: str) -> str:
    """'`file`, written by `command`, commit abc1234 (date)' from git (or 'not committed')."""
    log = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", rel], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", rel], cwd=ROOT, capture_output=True, text=True)
    when = log.stdout.strip().replace(" ", ", ") if log.stdout.strip() else "not committed"
    if dirty.stdout.strip():
        when += " (changed since: commit and rerun this script)"
    return f"Source: `{rel}`, written by `{command}`; commit {when}."


def load(rel: str):
    p = ROOT / rel
    return json.loads(p.read_text()) if p.is_file() else None


def table(header: list[str], rows: list[list]) -> list[str]:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("–" if v is None else str(v))  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(fmt(v) for v in r) + " |" for r in rows
    ]


def concepts() -> list[str]:
    return sorted(p.stem for p in (ROOT / "reports/evaluate").glob("*.json"))


# ----------------------------------------------------------------------------- sections


def base_model() -> list[str]:
    q = load("reports/train_base/quality.json")
    if not q:
        return []
    rows = [
        [
            c,
            f"{v['student']['lpips']:.3f}",
            f"{v['identity']['lpips']:.3f}",
            f"{v['student']['psnr']:.2f}",
            f"{v['identity']['psnr']:.2f}",
            v["student"]["n"],
        ]
        for c, v in q["concepts"].items()
    ]
    tc = q["text_conditioning"]
    return [
        "## The base model",
        "",
        provenance("reports/train_base/quality.json", "dvc repro train_base"),
        "",
        f"{q['steps']} steps, {q['train_seconds']} s of training. LPIPS (alex) and PSNR against the teacher on "
        f"the {q.get('split', 'held-out')} photos; the last two rows are calibration concepts the base never saw.",
        "",
        *table(["concept", "LPIPS base", "LPIPS identity", "PSNR base", "PSNR identity", "crops"], rows),
        "",
        f"Text conditioning: for {tc['diagonal_wins']} of {tc['concepts']} base concepts the output under the "
        "concept's own prompt is nearest its own teacher.",
        "",
    ]


def layers() -> list[str]:
    t = load("reports/analyze_layers/table.json")
    if not t:
        return []
    rows = [
        [
            r["group"],
            len(r["layers"]),
            r["probe_lora_params"],
            f"{r['probe_gain']:+.4f}",
            r["probe_rank"],
            f"{r['delta_rel_change']:.3f}",
            r["delta_rank"],
            "yes" if r["group"] in t["crucial_groups"] else "",
            "yes" if r["in_paper_choice"] else "",
        ]
        for r in t["groups"]
    ]
    return [
        "## Crucial layers (`analyze_layers`)",
        "",
        provenance("reports/analyze_layers/table.json", "dvc repro analyze_layers"),
        "",
        f"Scored on the calibration concepts {', '.join(t['calibration'])}; "
        f"crucial = top {t['top_k']} by `{t['select_by']}`. Spearman(probe, delta) = "
        f"{t['spearman_probe_vs_delta']:.2f}.",
        "",
        *table(
            [
                "group",
                "layers",
                "probe LoRA params",
                "probe gain (LPIPS)",
                "probe rank",
                "‖dW‖/‖W‖",
                "delta rank",
                "crucial",
                "paper's choice",
            ],
            rows,
        ),
        "",
    ]


def ranks() -> list[str]:
    r, rows_file = load("reports/search_ranks/table.json"), load("bench/results/rank_rows.json")
    if not r:
        return []
    out = [
        "## Rank search (`search_ranks`) and the paper's comparison rows",
        "",
        provenance("reports/search_ranks/table.json", "dvc repro search_ranks"),
        "",
        f"Searched: {r['params']} parameters (budget {r['budget_params']}), {100 * r['energy_kept']:.0f} % of dW's "
        f"spectral energy; what ships: {r.get('allocation', 'searched')} ({r.get('shipped_params', r['params'])} "
        "parameters).",
        "",
    ]
    if not rows_file:
        return out + ["The comparison rows: not run yet (`python -m bench.rank_rows`).", ""]
    cal = rows_file["calibration"]
    rows = [
        [
            x["row"],
            x["params"],
            f"{100 * x['params_share']:.2f} %",
            *[f"{x['lpips_per_concept'][c]:.4f}" for c in cal],
            f"{x['lpips']:.4f}",
            f"{x['gain_vs_base']:+.4f}",
        ]
        for x in rows_file["rows"]
    ]
    st = rows_file["settings"]
    return out + [
        provenance("bench/results/rank_rows.json", "python -m bench.rank_rows"),
        "",
        f"Each row is a {st['steps']}-step LoRA fine-tune per calibration concept, scored on {st['eval_limit']} "
        "val crops (spread over all val photos) each: one seed, no interval.",
        "",
        *table(["row", "params", "share of base", *cal, "mean LPIPS", "gain vs base"], rows),
        "",
    ]


FT_COLS = "concept|trainable params|share of base|adapter bytes|train s|pairs used|val LPIPS adapter|val LPIPS identity"
EV_COLS = (
    "concept|crops|LPIPS student|LPIPS base|LPIPS identity|Δ LPIPS vs base|KID student|KID identity|FID student|"
    "FID identity|PSNR|SSIM"
)


def _spread(x: dict) -> str:
    """A per-crop metric as 'mean [low, high]' (files from before photo intervals: 'mean ± boot_std')."""
    if "ci95" in x:
        return f"{x['mean']:.3f} [{x['ci95']['low']:.3f}, {x['ci95']['high']:.3f}]"
    return f"{x['mean']:.3f} ± {x['boot_std']:.3f}"


def _ft_row(c: str, m: dict) -> list:
    h = m.get("val") or m["heldout"]
    return [
        c,
        m["trainable_params"],
        f"{100 * m['trainable_share']:.2f} %",
        m["adapter_bytes"],
        m["train_seconds"],
        f"{m['pairs_used']}/{m['pairs_total']}",
        *(f"{h[k]['lpips']:.3f}" for k in ("lora", "identity")),
    ]


def _fid(x: dict) -> str:
    return f"{x['fid']['value']:.1f}" if x["fid"]["value"] is not None else "–"


def _ev_row(c: str, e: dict) -> list:
    s, b, i = e["student"], e["base_without_adapter"], e["identity"]
    return [
        c,
        e.get("test_pairs", e.get("heldout_pairs")),
        _spread(s["lpips"]),
        f"{b['lpips']['mean']:.3f}",
        f"{i['lpips']['mean']:.3f}",
        _spread(d) if (d := e.get("paired", {}).get("student_minus_base_without_adapter", {}).get("lpips")) else None,
        f"{s['kid']['value']:.4f}",
        f"{i['kid']['value']:.4f}",
        _fid(s),
        _fid(i),
        f"{s['psnr']['mean']:.2f}",
        f"{s['ssim']['mean']:.3f}",
    ]


def _ev_note(files: list[dict]) -> str:
    if files and all(e.get("split") == "test" for e in files):
        return (
            "On the test photos. [low, high] is a 95 % bootstrap interval over test photos (a photo's crops "
            "together); Δ is student minus base on the same crops; one training seed."
        )
    return "± is the standard deviation over bootstrap resamples of the held-out crops (not of photos, not of seeds)."


def _baselines_note(b: dict) -> str:
    n = b["settings"]["eval_limit"] or "all"
    if b.get("splits"):
        return (
            f"the best step is chosen on {n} val crops (spread over all val photos) and every figure is read on "
            f"{n} test crops: these figures prove nothing beyond one run."
        )
    return (
        f"the held-out set is the first {n} held-out pairs, which is also where the best step is read: these "
        "figures choose nothing and prove nothing beyond one run."
    )


def _spread_note() -> str:
    files = [load(f"reports/evaluate/{c}.json") or {} for c in concepts()]
    if files and all(e.get("split") == "test" for e in files):
        return (
            "Read the spreads with care: the pipeline's choices (layers, ranks) read the val photos and the "
            "reported figures the test photos; intervals are a bootstrap over photos, with one training seed. "
            "A paired difference whose interval contains 0 is a tie."
        )
    return (
        "Read the spreads with care: the pipeline's choices (layers, ranks) and the reported figures still use "
        "the same held-out photos, with one training seed, and ± below is a bootstrap over crops. A difference "
        "smaller than a few of those spreads is a tie."
    )


def adapters() -> list[str]:
    out = ["## Per-concept adapters (`finetune_lora`, `evaluate`)", ""]
    ft = [_ft_row(c, m) for c in concepts() if (m := load(f"reports/finetune_lora/{c}/metrics.json"))]
    ev_files = [e for c in concepts() if (e := load(f"reports/evaluate/{c}.json"))]
    ev = [_ev_row(e["concept"], e) for e in ev_files]
    if ft:
        out += [
            provenance("reports/finetune_lora", "dvc repro finetune_lora@<concept>"),
            "",
            *table(FT_COLS.split("|"), ft),
            "",
        ]
    if ev:
        out += [
            provenance("reports/evaluate", "dvc repro evaluate@<concept>"),
            "",
            _ev_note(ev_files),
            "",
            *table(EV_COLS.split("|"), ev),
            "",
        ]
    grids = [
        f"![{c}](../reports/evaluate/{c}.png)" for c in concepts() if (ROOT / f"reports/evaluate/{c}.png").is_file()
    ]
    return out + (["Input | teacher | base without adapter | student, per concept:", "", *grids, ""] if grids else [])


def export() -> list[str]:
    rows = []
    for c in concepts():
        x = load(f"reports/export_onnx/{c}.json")
        if not x:
            continue
        v, a = x["variants"], x["adapter_artifact"]
        rows.append(
            [
                c,
                f"{x['parity']['max_abs_diff']:.1e}",
                v["fp32"]["bytes"],
                a["bytes"],
                f"{100 * a['share_of_model']:.2f} %",
                f"{a['max_abs_diff_vs_direct']:.1e}",
                v.get("int8", {}).get("bytes"),
                v.get("int8", {}).get("lpips_vs_fp32"),
                _opencv(x),
            ]
        )
    if not rows:
        return []
    return [
        "## ONNX export (`export_onnx`)",
        "",
        provenance("reports/export_onnx", "dvc repro export_onnx@<concept>"),
        "",
        'Latency is one figure for every concept (the same architecture): "Generator size and latency" below.',
        "",
        *table(
            [
                "concept",
                "parity max abs Δ",
                "fp32 bytes",
                "adapter artifact bytes",
                "artifact / model",
                "artifact vs direct max abs Δ",
                "int8 bytes",
                "int8 LPIPS vs fp32",
                "OpenCV DNN vs onnxruntime: max abs Δ fp32 / fp16 / patched base; int8 mean abs Δ to fp32, OpenCV / onnxruntime",
            ],
            rows,
        ),
        "",
    ]


def _opencv(x: dict) -> str:
    o = x.get("opencv")
    if not o:
        return "not checked"
    parts = [f"{o[k]['max_abs_diff']:.1e}" for k in ("fp32", "fp16", "base_patched_with_adapter") if k in o]
    i8 = o.get("int8", {}).get("mean_abs_diff_vs_fp32")
    return " / ".join(parts) + (f"; int8 to fp32: {i8['opencv']:.3f} / {i8['onnxruntime']:.3f}" if i8 else "")


def mobile() -> list[str]:
    b = load("bench/results/phone_formats.json")
    if not b:
        return []
    rows, ort = [], []
    for c, x in b["concepts"].items():
        threads = x["threads"]
        for name, f in x["files"].items():
            p = f.get("parity", {})
            lat = f.get("latency", {})
            check = p.get("max_abs_diff") if p else f.get("check", {}).get("checked")
            rows.append(
                [
                    c,
                    name,
                    f["precision"],
                    f["bytes"],
                    f.get("convert_s"),
                    f"{check:.1e}" if isinstance(check, float) else check,
                    p.get("lpips_vs_torch"),
                    *[lat.get(f"threads_{t}", {}).get("median_ms") for t in threads],
                    *[f.get("latency_vs_onnxruntime", {}).get(f"threads_{t}") for t in threads],
                ]
            )
        o = x["onnxruntime_fp32"]
        ort.append([c, x.get("stage_s"), o["bytes"], *[o["latency"][f"threads_{t}"]["median_ms"] for t in threads]])
    if not rows:
        return []
    return [
        "## Phone formats (`bench.phone_formats`)",
        "",
        provenance("bench/results/phone_formats.json", "python -m bench.phone_formats"),
        "",
        f"On {b['machine']}. `export_mobile` with every format (the default run makes none: they are opt-in, "
        "`export_mobile.formats`), from the default run's models.",
        "",
        "ExecuTorch programs (its runtime, XNNPACK backend) and LiteRT models (the LiteRT interpreter, XNNPACK "
        "delegate) run here, on x86_64: parity against the torch model on test crops and latency at 256², beside the "
        "concept's fp32 ONNX model in onnxruntime in the same run. Core ML has no runtime on Linux: its packages pass "
        "a structural check only. Each file is a whole model; only the ONNX route patches one shared base with a "
        "small adapter (`docs/deploy.md`). Conversion seconds are the stage's own, on this 2-core machine.",
        "",
        *table(
            [
                "concept",
                "file",
                "precision",
                "bytes",
                "convert s",
                "max abs Δ vs torch (or check)",
                "LPIPS vs torch",
                *[f"ms, {t} thread(s)" for t in threads],
                *[f"/ onnxruntime, {t} thread(s)" for t in threads],
            ],
            rows,
        ),
        "",
        *table(
            [
                "concept",
                "export_mobile s (all formats)",
                "onnxruntime fp32 bytes",
                *[f"onnxruntime ms, {t} thread(s)" for t in threads],
            ],
            ort,
        ),
        "",
    ]


def tiling() -> list[str]:
    t = load("bench/results/tiling.json")
    if not t:
        return []
    rows = [
        [
            c,
            v["lpips_vs_whole"]["tiled"]["mean"],
            v["lpips_vs_whole"]["tiled"]["max"],
            v["lpips_vs_whole"]["resized"]["mean"],
            v["gradient_max_step"]["whole"],
            v["gradient_max_step"]["tiled"],
            v["gradient_max_step"]["tiled_without_overlap"],
        ]
        for c, v in t["concepts"].items()
    ]
    return [
        "## Full-resolution editing (`bench.tiling`)",
        "",
        provenance("bench/results/tiling.json", "python -m bench.tiling"),
        "",
        f"`e2gan apply --fit tile` (256² tiles overlapping by {t['overlap']} px, blended) and `--fit resize` against "
        f"the same generator run on the whole photo in torch, on {len(t['photos'])} test photos (longest side "
        f"≤ {t['max_side']} px); and the largest mean step between neighbouring columns on a flat 1024-px gradient.",
        "",
        *table(
            [
                "concept",
                "LPIPS tiled vs whole (mean)",
                "(max)",
                "LPIPS resized vs whole (mean)",
                "gradient step: whole",
                "tiled",
                "tiled, no overlap",
            ],
            rows,
        ),
        "",
        "Rows: watercolor, cartoon, winter; columns: input | whole photo in torch | tiled | resized.",
        "",
        "![input | whole | tiled | resized](../bench/results/tiling.jpg)",
        "",
    ]


def baselines() -> list[str]:
    b = load("bench/results/baselines.json")
    if not b:
        return []
    out = [
        "## Baselines on one concept (`bench.baselines`)",
        "",
        provenance("bench/results/baselines.json", "python -m bench.baselines --concepts winter"),
        "",
        f"Scale `{b['scale']}`, {b['resolution']}², {b['threads']} threads. One seed; " + _baselines_note(b),
        "",
    ]
    for c in b["concepts"]:
        rows = [
            [
                r["method"],
                r["pairs"],
                r["steps"],
                f"{r['lpips_final']:.3f}",
                f"{r['lpips_best']:.3f}",
                f"{r['kid']:.4f}",
                r["trainable_params"],
                r["stored_bytes"],
                round(r["train_seconds"]),
            ]
            for r in c["rows"]
        ]
        out += [
            f"### {c['concept']} (LPIPS base {c['lpips_base']:.3f}, identity {c['lpips_identity']:.3f})",
            "",
            *table(
                [
                    "method",
                    "pairs",
                    "steps",
                    "LPIPS final",
                    "LPIPS at best val step" if b.get("splits") else "LPIPS best",
                    "KID",
                    "trainable params",
                    "stored bytes",
                    "train s",
                ],
                rows,
            ),
            "",
        ]
    return out


def window_check() -> list[str]:
    w = load("bench/results/window_check.json")
    if not w or not w.get("per_concept"):
        return []

    def diff(d: dict) -> str:
        return f"{d['mean']:+.4f} [{d['ci95']['low']:+.4f}, {d['ci95']['high']:+.4f}]"

    def secs(v: list) -> str:
        return f"{sum(v) / len(v):.0f}" if v else "–"

    rows = []
    for c, e in w["per_concept"].items():
        a, g = e["adapter"], e["gap_closed"]
        rows.append(
            [
                c,
                ", ".join(map(str, e["seeds"])),
                f"{a['lpips_test']['whole']:.4f} / {a['lpips_test']['windows']:.4f}",
                diff(a["windows_minus_whole"]),
                diff(e["full_ft"]["windows_minus_whole"]),
                f"{a['kid_test']['whole']:.3f} / {a['kid_test']['windows']:.3f}",
                f"{g['whole']['mean']:.1%} / {g['windows']['mean']:.1%}",
                f"{secs(a['seconds_to_best']['whole'])} / {secs(a['seconds_to_best']['windows'])}",
            ]
        )
    p = w["pooled"]["gap_closed"]
    return [
        "## Training windows against whole crops (`bench.window_check`)",
        "",
        provenance("bench/results/window_check.json", w["command"]),
        "",
        f"The concept benchmark's shipped adapter and full fine-tune trained on 96-pixel windows "
        f"(`finetune_lora.patch`) against the same methods on whole 128-pixel crops (the runs the benchmark set "
        f"aside, named by the plan at {w['whole_crops_plan']}); test split, paired on the same crops, 95 % intervals "
        "over test photos and seeds. Pooled gap closed: whole crops "
        f"{p['whole']['mean']:.1%} [{p['whole']['ci95']['low']:.1%}, {p['whole']['ci95']['high']:.1%}], windows "
        f"{p['windows']['mean']:.1%} [{p['windows']['ci95']['low']:.1%}, {p['windows']['ci95']['high']:.1%}].",
        "",
        *table(
            [
                "concept",
                "seeds",
                "adapter LPIPS, whole / windows",
                "adapter, windows − whole",
                "full fine-tune, windows − whole",
                "adapter KID, whole / windows",
                "gap closed, whole / windows",
                "seconds to val-best, whole / windows",
            ],
            rows,
        ),
        "",
    ]


PAPER_ROWS = [  # E²GAN (Gong et al., ICML 2024): Flickr-Scenery, FID vs the teacher averaged over 10 concepts
    ["pix2pix from scratch", "FID 114.2", "~11 M", "950 s"],
    ["E²GAN (searched ranks)", "FID 109.37", "0.092 M (~1 %)", "~200 s"],
    ["uniform ranks 1x / 4x", "FID 130.98 / 111.42", "0.056 M / 0.164 M", ""],
    ["random ranks", "FID 129.87", "0.100 M", ""],
]


def concept_bench() -> list[str]:
    b = load("bench/results/concept_bench.json")
    if not b or not b.get("summary"):
        return []
    s = b["summary"]
    n_runs = len(b["runs"])
    jobs = b.get("jobs") or {}
    planned = len(set(jobs.values())) if jobs else n_runs  # distinct runs: methods that train the same thing share one
    reused: dict[str, int] = {}
    for r in b["runs"]:
        if r.get("reused_from"):
            reused[r["reused_from"]] = reused.get(r["reused_from"], 0) + 1
    cmd = "python -m bench.concept_bench" + "".join(f" --reuse bench/results/{f}" for f in sorted(reused))
    out = [
        "## The concept benchmark (`bench.concept_bench`)",
        "",
        provenance("bench/results/concept_bench.json", cmd)
        + "".join(f" {n} runs were taken over from `{f}` (the same keys)." for f, n in sorted(reused.items())),
        "",
        f"Scale `{b['scale']}` ({b['settings']}), {b['resolution']}², {b['threads']} threads, device "
        f"{b['device']}; {n_runs} of {planned} distinct planned runs done (concepts {', '.join(s['concepts_done'])}, "
        f"seeds {s['seeds_done']}; the command resumes the rest). Every figure is on the test photos "
        "(all their crops) at each run's val-best step; intervals are 95 % over a bootstrap of test photos and "
        "training seeds; an interval containing 0 is a tie." + pix2pix_note(b["runs"]),
        "",
        (ROOT / "bench/results/concept_bench.md").read_text().strip(),
        "",
        "![test LPIPS vs stored bytes](../bench/results/concept_bench.png)",
        "",
        "The paper's corresponding figures (its scale: 256², ~1,000 photos, a diffusion teacher, FID; ours: "
        "128², the filter teacher, LPIPS, so only the ratios compare):",
        "",
        *table(["paper row", "quality", "trainable / stored params", "training time"], PAPER_ROWS),
        "",
        "Side by side, as ratios (ours from the summary above, pooled over concepts and seeds; the paper's from its "
        "own table; a ratio of ours that the benchmark has not measured yet is –):",
        "",
        *table(["", "ours", "paper"], beside_paper(s)),
        "",
    ]
    return out


FOCUSED_BENCH = "python -m bench.concept_bench --concepts watercolor,cartoon,winter,pop_art --seeds 0,1 --random 0 "


def focused_bench(name: str, methods: str, title: str, about: str, cmd: str | None = None) -> list[str]:
    """A concept benchmark run of a few methods (`--out bench/results/<name>.json`): its table, under `title`
    (`cmd`: the command that wrote it, when it is not FOCUSED_BENCH with these methods)."""
    rel = f"bench/results/{name}.json"
    b = load(rel)
    if not b or not b.get("summary"):
        return []
    cmd = cmd or f"{FOCUSED_BENCH}--methods {methods} --out {rel}"
    return [
        f"## {title}",
        "",
        provenance(rel, cmd),
        "",
        about,
        "",
        (ROOT / rel).with_suffix(".md").read_text().strip(),
        "",
    ]


def head_scale_bench() -> list[str]:
    """The shipped adapter's start (finetune_lora.start_head_scale, in its runs) against the base as it is
    (`from_base`), paired on the same test crops and seeds."""
    return focused_bench(
        "concept_bench_head_scale",
        "adapter,from_base",
        "The adapter's start (`finetune_lora.start_head_scale`)",
        "The shipped adapter and the full fine-tune start from the base with its output layer scaled by params.yaml's "
        "`finetune_lora.start_head_scale` at that commit (0.3); `from_base` is the same adapter trained from the "
        "base as it is (1). Same protocol as the concept benchmark (test photos, val-best step, 95 % intervals over "
        "test photos and seeds); no pix2pix, scratch or random rows. Its base was trained on whole crops "
        "(`train_base.patch: 0`).",
    )


def window_base_bench() -> list[str]:
    """The gap closed with the base trained on windows (train_base.patch), the shipped adapter and its full
    fine-tune."""
    return focused_bench(
        "concept_bench_window_base",
        "adapter,full_ft",
        "The base trained on windows (`train_base.patch`)",
        "The shipped design (start 0.3) on a base trained on 96-pixel windows (`train_base.patch: 96`): the shipped "
        "adapter against its full fine-tune from the same start, with the identity and the base without adapter. "
        "Same protocol as the concept benchmark; no pix2pix, scratch or random rows. The gap closed is the figure "
        "to hold against the whole-crop base's in the section above.",
    )


def long_scratch_bench() -> list[str]:
    """pix2pix with three times the benchmark's budget (`--scale long_scratch`), against the same adapter runs:
    the steps, seeds and concepts as the file has them."""
    rel = "bench/results/concept_bench_long_scratch.json"
    b = load(rel) or {}
    if not b.get("summary"):
        return []
    concepts, seeds = b["concepts"], ",".join(map(str, b["seeds"]))
    return focused_bench(
        "concept_bench_long_scratch",
        "pix2pix",
        "pix2pix with three times the steps (`--scale long_scratch`)",
        f"pix2pix trained for {b['settings']['scratch_steps']} steps instead of 240 ({ran_seeds(b['runs'], 'pix2pix')}), "
        f"scored every {b['settings']['scratch_eval_every']}; the adapter and full fine-tune "
        "rows are the main file's runs, taken over by key. Is pix2pix still improving where the benchmark's budget "
        "ends, and where does its time to val-best go?" + pix2pix_note(b["runs"]),
        cmd=f"python -m bench.concept_bench --concepts {','.join(concepts)} --seeds {seeds} --methods pix2pix "
        f"--random 0 --scale long_scratch --reuse bench/results/concept_bench.json --out {rel}",
    )


def long_finetune_bench() -> list[str]:
    """The fine-tunes with four times the benchmark's steps (`--scale long_finetune`), against the main file's
    models from scratch: the steps, seeds and concepts as the file has them."""
    rel = "bench/results/concept_bench_long_finetune.json"
    b = load(rel) or {}
    if not b.get("summary"):
        return []
    concepts, seeds, st = b["concepts"], ",".join(map(str, b["seeds"])), b["settings"]
    return focused_bench(
        "concept_bench_long_finetune",
        "pix2pix,e2gan_scratch",
        "The fine-tunes with four times the steps (`--scale long_finetune`)",
        f"The shipped adapter and its full fine-tune trained for {st['lora_steps']} steps instead of 150 (seeds {seeds}, "
        f"{' and '.join(concepts)}), scored on val every {st['eval_every']}; pix2pix and the generator from scratch "
        "are the main file's runs (240 steps), taken over by key. Does a longer fine-tune close what 150 steps "
        "leave: cartoon's KID against the base, watercolor against the generator from scratch?"
        + pix2pix_note(b["runs"]),
        cmd=f"python -m bench.concept_bench --concepts {','.join(concepts)} --seeds {seeds} --methods "
        f"pix2pix,e2gan_scratch --random 0 --scale long_finetune --reuse bench/results/concept_bench.json --out {rel}",
    )


def cartoon_kid() -> list[str]:
    """What cartoon's KID rewards (`bench.cartoon_kid`): the teacher's parts and the student with its outlines,
    each KID against the teacher and paired with the base's."""
    rel = "bench/results/cartoon_kid.json"
    r = load(rel)
    if not r:
        return []
    rows = []
    for name, v in sorted(r["sets"].items(), key=lambda kv: -kv[1]["kid"]):  # worst first
        d = v.get("minus_base")
        ci = d and d.get("ci95")
        rows.append(
            [
                name,
                f"{v['kid']:.4f}",
                "–" if not d else f"{d['mean']:+.4f}" + (f" [{ci['low']:+.4f}, {ci['high']:+.4f}]" if ci else ""),
            ]
        )
    lum = r["outline_luminance"]
    return [
        "## What cartoon's KID rewards (`bench.cartoon_kid`)",
        "",
        provenance(rel, "python -m bench.cartoon_kid"),
        "",
        f"Every test crop ({r['test_crops']}, {r['test_photos']} photos), KID against the teacher; each set minus the "
        "base without adapter on the same crops, 95 % interval over photo half-samples (an interval holding 0 is a "
        "tie). The parts are the `filters` teacher's own steps applied to the test inputs (they reproduce the "
        f"teacher exactly on {r['teacher_reproduced']:.0%} of the crops). On the teacher's outline pixels "
        f"({lum['outline_share']:.0%} of all) the shipped student keeps {lum['outline_pixels']:.0%} of the input's "
        f"luminance ({lum['other_pixels']:.0%} on the others), where the teacher draws black.",
        "",
        *table(["set (worst KID first)", "KID", "minus the base's KID [95 % CI]"], rows),
        "",
        "![teacher and the sets, on test crops](../bench/results/cartoon_kid.png)",
        "",
    ]


def ran_seeds(runs: list[dict], method: str) -> str:
    """Which seeds of each concept a method has runs for, e.g. "cartoon seeds 0,1,2; winter seed 0"."""
    by: dict[str, list[int]] = {}
    for r in runs:
        if r.get("method") == method:
            by.setdefault(r["concept"], []).append(r["seed"])
    return "; ".join(f"{c} seed{'s' * (len(v) > 1)} {','.join(map(str, sorted(v)))}" for c, v in by.items())


def pix2pix_note(runs: list[dict]) -> str:
    """Whether pix2pix's val-best was its last step (then its time to best is its whole budget)."""
    p2p = [r for r in runs if r.get("method") == "pix2pix"]
    last = [r for r in p2p if r["best_step"] == r["steps"]]
    if not p2p:
        return ""
    if len(last) == len(p2p):
        return f" pix2pix's val-best was its last step in all {len(p2p)} of its runs: its time to best is its whole budget."
    return f" pix2pix's val-best was its last step in {len(last)} of its {len(p2p)} runs."


def beside_paper(s: dict) -> list[list]:
    """The benchmark's headline ratios next to the same ratios of the paper's figures."""
    per = s["per_concept"].values()

    def pooled(method: str) -> float | None:  # mean test LPIPS over the concepts that ran `method`
        v = [e["lpips"][method] for e in per if method in e["lpips"]]
        return sum(v) / len(v) if len(v) == len(per) else None

    svr, ratio = s.get("searched_vs_random"), s.get("time_ratio_vs_pix2pix")
    match = s.get("time_to_pix2pix_quality")
    ad, p2p = pooled("adapter"), pooled("pix2pix")
    return [
        [
            "stored per concept / full model",
            f"{s['adapter_bytes_vs_full']:.2%} (bytes, fp16 adapter)",
            "~1 % (0.092 M params)",
        ],
        [
            "adapter training time to its best / pix2pix's",
            None if ratio is None else f"{ratio:.3f}{ci_text(s.get('time_ratio_ci95'))}",
            "0.21 (~200 / 950 s)",
        ],
        [
            "adapter training time to pix2pix's best val LPIPS / pix2pix's time to it",
            None
            if not match or match["ratio"] is None
            else f"{match['ratio']:.3f}"
            + (f" ({match['never_reached']} runs never got there)" if match["never_reached"] else ""),
            "– (E²GAN ends better than pix2pix, in 0.21 of its time)",
        ],
        [
            "adapter quality vs pix2pix from scratch",
            None if p2p is None else f"test LPIPS {ad:.3f} vs {p2p:.3f}",
            "FID 109.37 vs 114.2",
        ],
        [
            "searched (shipped) vs random allocation",
            None
            if svr is None
            else f"LPIPS {svr['diff']:+.4f} [{svr['ci95']['low']:+.4f}, {svr['ci95']['high']:+.4f}]",
            "FID 109.37 vs 129.87",
        ],
        ["share of the identity → full fine-tune gap closed", f"{s['pooled']['gap_closed']:.1%}", "not reported"],
    ]


def generator() -> list[str]:
    g = load("bench/results/generator_latency.json")
    if not g:
        return []
    rows = []
    for name, m in g["models"].items():
        for size, s in m["sizes"].items():
            rows.append(
                [
                    name,
                    size,
                    m["params"],
                    m["onnx_weights"],
                    s["gmacs"],
                    *[s.get(f"threads_{t}", {}).get("median_ms") for t in g["threads"]],
                ]
            )
    return [
        "## Generator size and latency (`bench.generator_latency`)",
        "",
        provenance("bench/results/generator_latency.json", "python -m bench.generator_latency"),
        "",
        "Both networks exported and timed in one run (onnxruntime CPU, median of 20).",
        "",
        *table(
            ["model", "size", "params", "shipped weights", "GMACs", *[f"ms, {t} thread(s)" for t in g["threads"]]], rows
        ),
        "",
        f"Ratios E²GAN / ResNet-9: `{json.dumps(g['ratios'])}`.",
        "",
        *_runtime_rows(g),
    ]


def _runtime_rows(g: dict) -> list[str]:
    """Other runtimes of the same run: milliseconds, and ratios against onnxruntime and against ResNet-9."""
    rows = []
    for size, by_rt in g.get("runtime_ratios", {}).items():
        for rt, by_t in by_rt.items():
            for t in g["threads"]:
                e = g["models"]["e2gan"]["sizes"][size][rt][f"threads_{t}"]["median_ms"]
                r = g["models"]["resnet9"]["sizes"][size][rt][f"threads_{t}"]["median_ms"]
                k = by_t[f"threads_{t}"]
                rows.append([size, rt, t, e, r, k["e2gan_vs_onnxruntime"], k["e2gan_vs_resnet9"]])
    if not rows:
        return []
    return [
        *table(
            ["size", "runtime", "threads", "E²GAN ms", "ResNet-9 ms", "E²GAN / its onnxruntime", "E²GAN / ResNet-9"],
            rows,
        ),
        "",
    ]


def throughput() -> list[str]:
    out = []
    for rel in sorted((ROOT / "bench/results").glob("train_throughput*.json")):
        t = json.loads(rel.read_text())
        rows = [[d, v["steps_per_s"], v["train_base_projected_s"]] for d, v in t["devices"].items()]
        out += [
            provenance(str(rel.relative_to(ROOT)), "python -m bench.train_throughput"),
            "",
            f"{t['image_size']}², batch {t['batch']}, torch {t['torch']}, GPU {t['gpu']}, {t['cpu_threads']} CPU "
            f"threads; GPU/CPU {t.get('ratio_gpu_vs_cpu')}×.",
            "",
            *table(["device", "steps/s", "train_base projected s"], rows),
            "",
        ]
    return (["## Training throughput (`bench.train_throughput`)", "", *out]) if out else []


def other() -> list[str]:
    out = ["## Other measurements", ""]
    f = load("bench/results/filters_throughput.json")
    if f:
        rows = [[op, v["pairs_per_s"], v["edit_ms"], v["edit_vs_io"]] for op, v in sorted(f["filters"].items())]
        out += [
            "### Filters teacher throughput",
            "",
            provenance("bench/results/filters_throughput.json", "python -m bench.filters_throughput"),
            "",
            *table(["filter", "pairs/s", "edit ms", "edit / I/O"], rows),
            "",
        ]
    e = load("bench/results/demo_e2e.json")
    if e:
        out += [
            "### Browser demo",
            "",
            provenance("bench/results/demo_e2e.json", "python -m bench.demo_e2e"),
            "",
            *table(
                ["measured", "value"],
                [
                    ["browser vs Python onnxruntime, max abs Δ", e["browser_vs_python_max_abs_diff"]],
                    ["frames/s in the page (256², wasm)", e["browser"]["fps"]],
                    ["Python onnxruntime ms (all threads)", e["python_onnxruntime"]["threads_all"]["median_ms"]],
                ],
            ),
            "",
        ]
    u = load("bench/results/ui_screens.json")
    if u:
        rep = u["report"]
        out += [
            "### What users see (report, concept form, run result)",
            "",
            provenance("bench/results/ui_screens.json", "python -m bench.ui_screens"),
            "",
            *table(
                ["checked", "value"],
                [
                    [f"report at {u['width']} px: elements wider than the window", rep["nWide"]],
                    ["report scroll width (px)", rep["scrollWidth"]],
                    ["report images decoded", rep["images_ok"]],
                    ["concept form shows its fields", u["form"]["fields_shown"]],
                    [f"run of '{u['concept']}' from the deployment", u["run_state"]],
                    ["its result artifact holds the grid", u["artifact"]["has_grid"]],
                ],
            ),
            "",
            "![the concept form](../bench/results/ui_form.png)",
            "",
            "![a run's result artifact](../bench/results/ui_result.png)",
            "",
        ]
    return out


def timing() -> list[str]:
    t = load("bench/results/pipeline_timing.json")
    if not t:
        return []
    runs = {k: t[k] for k in ("full", "repro") if k in t}
    heads = {"full": "full run (`full`)", "repro": "a rerun of what was stale (`repro`)"}
    import yaml

    order = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])  # the DAG's order

    def rank(name: str) -> tuple:
        stage, _, concept = name.partition("@")
        return (order.index(stage) if stage in order else len(order), concept)

    names = sorted(dict.fromkeys(n for r in runs.values() for n in r["stages"]), key=rank)
    rows = [[n, *[r["stages"].get(n) for r in runs.values()]] for n in names]
    rows.append(["**total** (`dvc repro` wall time)", *[r["seconds"] for r in runs.values()]])
    out = [
        "## Where the time goes",
        "",
        provenance("bench/results/pipeline_timing.json", "python -m bench.pipeline_timing <mode>"),
        "",
        "Wall seconds per stage of real `dvc repro` runs on one machine. Each column is one run: "
        + "; ".join(f"{heads[k]} at commit {r['commit']} on {r['cpu']} ({r['cores']} cores)" for k, r in runs.items())
        + ".",
        "",
        *table(["stage", *[heads[k] for k in runs]], rows),
        "",
        *[f"Note on the column {heads[k]}: {r['note']}." for k, r in runs.items() if r.get("note")],
        *([""] if any(r.get("note") for r in runs.values()) else []),
    ]
    if t.get("machines"):
        modes = (("full", "whole run (`full`)"), ("new_concept", "new concept"), ("noop", "no-op"))
        out += [
            "The latest run of each mode on each machine (`machines`; seconds, at commit):",
            "",
            *table(
                ["CPU", *[h for _, h in modes]],
                [
                    [cpu, *[f"{r[m]['seconds']} s at {r[m]['commit']}" if m in r else "–" for m, _ in modes]]
                    for cpu, r in sorted(t["machines"].items())
                ],
            ),
            "",
        ]
    if "new_concept" in t:
        n = t["new_concept"]
        parts = ", ".join(
            f"{k.split('@')[0]} {v} s" for k, v in sorted(n["stages"].items(), key=lambda kv: rank(kv[0]))
        )
        spread = (
            f" (the median of {len(n['runs_s'])} fresh runs: {', '.join(f'{x} s' for x in n['runs_s'])})"
            if len(n.get("runs_s", [])) > 1
            else ""
        )
        out += [
            f"A new concept (`{n['concept']}` added to params.yaml, `new-concept`, commit {n['commit']}): "
            f"**{n['seconds']} s** end to end{spread}: {parts}.",
            "",
        ]
    if "noop" in t:
        n = t["noop"]
        out += [
            f"A no-op `dvc repro` (everything up to date): {n['seconds']} s median of {len(n['runs_s'])} "
            f"(`dvc status`: {n['dvc_status_s']} s), commit {n['commit']}.",
            "",
        ]
    key = "full" if "full" in runs else next(iter(runs), None)
    if key and runs[key].get("top_costs"):
        slow = sorted(runs[key]["stages"], key=lambda n: -runs[key]["stages"][n])[:4]
        out += [
            f"Top costs of the slowest stages ({heads[key]}; cumulative seconds, nested calls count in their "
            "callers too):",
            "",
        ]
        for n in slow:
            costs = runs[key]["top_costs"].get(n, [])[:4]
            out.append(f"- `{n}`: " + "; ".join(f"`{c['function']}` {c['seconds']} s" for c in costs))
        out.append("")
    return out + finetune_step()


def finetune_step() -> list[str]:
    f = load("bench/results/finetune_step.json")
    if not f:
        return []
    parts = "; ".join(
        f"{k.replace('_', ' ')} {v['seconds']} s ({v['share_of_step']:.0%})"
        for k, v in f["parts"].items()
        if isinstance(v, dict)
    )
    threads = ", ".join(f"{t} thread{'s' * (t != '1')} {v['vs_default']}×" for t, v in f["threads"].items())
    bf16 = ""
    if "bf16" in f:
        p, r = f["pix2pix"], f["adapter_vs_pix2pix_step"]
        bf16 = (
            f" Under `precision: bf16` ({f['cpu_capability']}, native bf16: {'yes' if f['native_bf16'] else 'no'}) the "
            f"step takes {f['bf16']['vs_default']}× its fp32 time; pix2pix's ResNet-9 step {p['fp32_step_s']} s in fp32, "
            f"{p['bf16_vs_fp32']}× that in bf16, so the fine-tune's step is {r['fp32']}× pix2pix's in fp32 and "
            f"{r['bf16']}× in bf16."
        )
    return [
        f"One step of a concept's fine-tune (`python -m bench.finetune_step`, `bench/results/finetune_step.json`, "
        f"commit {f['commit']}, {f['machine']}; batch {f['batch']} at {f['image_size']}², median of {f['repeats']}): "
        f"**{f['parts']['step_s']} s**, {f['projected_training_s']} s for its {f['steps']} steps. Parts, each timed on "
        f"its own: {parts}. Channels-last layout {f['channels_last']['vs_default']}× the step; {threads}.{bf16}",
        "",
    ]


def refactor() -> list[str]:
    r = load("bench/results/refactor_compare.json")
    if not r:
        return []
    real = {
        p: d for p, d in r["differ"].items() if not all(isinstance(v, dict) and v["timing_only"] for v in d.values())
    }
    rows = [
        [
            f"`{p}`",
            "; ".join(
                f"{Path(f).name}: {v if isinstance(v, str) else ', '.join(v['differences'][:2])}" for f, v in d.items()
            ),
        ]
        for p, d in real.items()
    ]
    return [
        "## Layout changes leave results alone (`bench.refactor_check`)",
        "",
        provenance("bench/results/refactor_compare.json", "python -m bench.refactor_check --old <rev> --new <rev>"),
        "",
        f"The reduced DAG run by {r.get('old', 'the old')} and {r.get('new', 'the new')} code on one machine: "
        f"{len(r['same'])} outputs byte-identical, {len(r['differ']) - len(real)} differ in timings only; the rest "
        "below. peft writes `target_modules` from a set, so its order changes from process to process; the "
        "adapter weights themselves are identical.",
        "",
        *table(["output", "what differs"], rows),
        "",
    ]


def experiments() -> list[str]:
    b = load("experiments/base_recipes.json")
    if not b:
        return []
    return [
        "## Research history",
        "",
        "`experiments/` keeps results of studies whose scripts no longer ship "
        "(`experiments/README.md`); each file names the commit and command that wrote it.",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results.md")
    args = ap.parse_args()
    lines = [
        "# Results",
        "",
        "Every table below is rendered by `python -m bench.results_doc` from one results file, "
        "named under its heading with the command that writes it and the commit of its last change. The "
        "pipeline's own figures (`reports/`) come from the default `dvc repro` on a 2-core x86_64 CPU machine; "
        "the default teacher is the `filters` stand-in, not a diffusion editor.",
        "",
        _spread_note(),
        "",
    ]
    for section in (
        base_model,
        layers,
        ranks,
        adapters,
        export,
        mobile,
        tiling,
        concept_bench,
        long_scratch_bench,
        long_finetune_bench,
        cartoon_kid,
        head_scale_bench,
        window_base_bench,
        window_check,
        baselines,
        generator,
        throughput,
        timing,
        other,
        refactor,
        experiments,
    ):
        lines += section()
    atomic_write_text(args.out, "\n".join(lines).rstrip() + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
