"""The pipeline's report: reports/index.html (self-contained: images inlined, no scripts, opens offline)
and reports/summary.md with the same tables."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReportInputs:
    """Where the stages wrote what the report shows (dvc.yaml passes each path)."""

    selection: Path  # select_base's JSON
    base_samples: Path  # train_base's samples.png
    layers: Path  # analyze_layers' table.json
    ranks: Path  # search_ranks' table.json
    evaluate: Path  # evaluate's folder (<concept>.json, <concept>.png)
    finetune: Path  # finetune_lora's reports folder (<concept>/...)
    export: Path  # export_onnx's metrics folder (<concept>.json)


def _load(p: Path) -> dict:
    return json.loads(p.read_text()) if p.is_file() else {}


def _img(p: Path, alt: str) -> str:
    if not p.is_file():
        return f"<p class='missing'>{html.escape(alt)}: not produced yet</p>"
    data = base64.b64encode(p.read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _f(v, nd=4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2e}" if 0 < abs(v) < 10**-nd else f"{v:.{nd}f}"
    return str(v)


def _ci(x: dict | None) -> str | None:
    """A 95 % interval as 'low – high' (None when the figure has none)."""
    ci = (x or {}).get("ci95")
    return f"{ci['low']:.4f} – {ci['high']:.4f}" if ci else None


def _diff(x: dict | None) -> str | None:
    """A paired difference as 'mean [low, high]'."""
    if not x or "ci95" not in x:
        return None
    return f"{x['mean']:+.4f} [{x['ci95']['low']:+.4f}, {x['ci95']['high']:+.4f}]"


def concept_rows(inp: ReportInputs, concepts: list[str]) -> list[dict]:
    rows = []
    for c in concepts:
        ev = _load(inp.evaluate / f"{c}.json")
        ft = _load(inp.finetune / c / "metrics.json")
        ex = _load(inp.export / f"{c}.json")
        s, b, i = ev.get("student", {}), ev.get("base_without_adapter", {}), ev.get("identity", {})
        paired = ev.get("paired", {})
        rows.append(
            {
                "concept": c,
                "test": ev.get("test_pairs"),
                "photos": ev.get("test_photos"),
                "fid": s.get("fid", {}).get("value"),
                "kid": s.get("kid", {}).get("value"),
                "lpips": s.get("lpips", {}).get("mean"),
                "lpips_ci": _ci(s.get("lpips")),
                "lpips_vs_base": _diff(paired.get("student_minus_base_without_adapter", {}).get("lpips")),
                "lpips_vs_identity": _diff(paired.get("student_minus_identity", {}).get("lpips")),
                "psnr": s.get("psnr", {}).get("mean"),
                "ssim": s.get("ssim", {}).get("mean"),
                "lpips_base": b.get("lpips", {}).get("mean"),
                "lpips_identity": i.get("lpips", {}).get("mean"),
                "fid_base": b.get("fid", {}).get("value"),
                "trainable": ft.get("trainable_params"),
                "share": ft.get("trainable_share"),
                "adapter_bytes": ft.get("adapter_bytes"),
                "train_s": ft.get("train_seconds"),
                "pairs": f"{ft.get('pairs_used')}/{ft.get('pairs_total')}" if ft else None,
                "parity": ex.get("parity", {}).get("max_abs_diff"),
                "latency_1t": ex.get("variants", {}).get("fp32", {}).get("latency_threads_1", {}).get("median_ms"),
            }
        )
    return rows


COLUMNS = [
    ("concept", "concept"),
    ("test", "test pairs"),
    ("photos", "test photos"),
    ("lpips", "LPIPS ↓"),
    ("lpips_ci", "95 % interval (photos)"),
    ("lpips_base", "LPIPS base ↓"),
    ("lpips_identity", "LPIPS identity ↓"),
    ("lpips_vs_base", "Δ LPIPS vs base [95 %]"),
    ("lpips_vs_identity", "Δ LPIPS vs identity [95 %]"),
    ("fid", "FID ↓"),
    ("fid_base", "FID base ↓"),
    ("kid", "KID ↓"),
    ("psnr", "PSNR ↑"),
    ("ssim", "SSIM ↑"),
    ("trainable", "trainable params"),
    ("adapter_bytes", "adapter bytes"),
    ("train_s", "train s"),
    ("pairs", "pairs used"),
    ("parity", "ONNX max |Δ|"),
    ("latency_1t", "ONNX ms (1 thread)"),
]


def summary(inp: ReportInputs) -> dict:
    sel = _load(inp.selection)
    an = _load(inp.layers)
    rk = _load(inp.ranks)
    return {
        "base": sel.get("base", []),
        "calibration": sel.get("calibration", []),
        "crucial_groups": an.get("crucial_groups", []),
        "ranks": rk.get("ranks", {}),
        "lora_params": rk.get("params"),
        "comparison": rk.get("comparison", []),
    }


def write_report(inp: ReportInputs, concepts: list[str], out_html: Path, out_md: Path) -> None:
    from pipeline.core.io import atomic_write_text

    rows, s = concept_rows(inp, concepts), summary(inp)
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_f(r[k]))}</td>" for k, _ in COLUMNS) + "</tr>" for r in rows)
    comp = "".join(
        f"<tr><td>{html.escape(r['row'])}</td><td>{r['params']}</td><td>{_f(r['lpips'])}</td>"
        f"<td>{_f(r['gain_vs_base'])}</td></tr>"
        for r in s["comparison"]
    )
    sections = []
    for c in concepts:
        sections.append(
            f"<section><h2>{html.escape(c)}</h2>"
            f"<h3>input | teacher | base (no adapter) | E²GAN student</h3>{_img(inp.evaluate / f'{c}.png', c)}"
            f"<h3>training curves</h3>{_img(inp.finetune / c / 'curves.png', c + ' curves')}</section>"
        )
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>e2gan report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}img{{max-width:100%}}
.missing{{color:#a00}}</style></head><body>
<h1>e2gan report</h1>
<p>Base concepts: {html.escape(", ".join(s["base"]))}. Calibration concepts: {html.escape(", ".join(s["calibration"]))}.
Crucial layer groups: {html.escape(", ".join(s["crucial_groups"]))}. LoRA parameters per concept: {s["lora_params"]}.</p>
<h2>Per concept (test photos, student vs teacher)</h2>
<p>Intervals: 95 % percentile bootstrap over test photos (a photo's crops together); Δ is student minus the
other model on the same crops. KID and FID are computed on the whole test set.</p><table><tr>{head}</tr>{body}</table>
<h2>Rank search comparison (calibration concepts, val photos)</h2>
<table><tr><th>row</th><th>params</th><th>LPIPS ↓</th><th>gain vs base</th></tr>{comp}</table>
<h2>Base model</h2>{_img(inp.base_samples, "base samples")}
{_img(inp.layers.parent / "importance.png", "layer importance")}{_img(inp.ranks.parent / "ranks.png", "ranks")}
{"".join(sections)}</body></html>"""
    atomic_write_text(out_html, doc)
    md = [
        "# e2gan summary",
        "",
        f"Base: {', '.join(s['base'])}; calibration: {', '.join(s['calibration'])}; "
        f"crucial groups: {', '.join(s['crucial_groups'])}; LoRA params per concept: {s['lora_params']}.",
        "",
        "Per concept, on the test photos (intervals: 95 % bootstrap over photos; Δ: student minus the other model "
        "on the same crops):",
        "",
        "| " + " | ".join(t for _, t in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    md += ["| " + " | ".join(_f(r[k]) for k, _ in COLUMNS) + " |" for r in rows]
    md += ["", "Rank search comparison (calibration concepts, val photos):", ""]
    md += ["| rank-search row | params | LPIPS | gain vs base |", "|---|---|---|---|"]
    md += [f"| {r['row']} | {r['params']} | {_f(r['lpips'])} | {_f(r['gain_vs_base'])} |" for r in s["comparison"]]
    atomic_write_text(out_md, "\n".join(md) + "\n")
