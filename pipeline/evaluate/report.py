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
    if not x or not x.get("ci95"):
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
                "kid_vs_base": _diff(paired.get("student_minus_base_without_adapter", {}).get("kid")),
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
    ("kid_vs_base", "Δ KID vs base [95 %]"),
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
    }


def _p(v, nd: int) -> str:
    """A figure at `nd` decimals ('–' when missing)."""
    return "–" if v is None else f"{v:.{nd}f}"


def _interval(x: dict | None, nd: int = 3, signed: bool = False) -> str:
    """'mean [low, high]' (a tie marked when the interval holds 0) from a paired difference or a mean with ci95."""
    if not x or not x.get("ci95"):
        return "–"
    f = f"{{:{'+' if signed else ''}.{nd}f}}"
    lo, hi = x["ci95"]["low"], x["ci95"]["high"]
    tie = " (tie)" if signed and lo <= 0 <= hi else ""
    return f"{f.format(x['mean'])} [{f.format(lo)}, {f.format(hi)}]{tie}"


def _kb(n) -> str:
    return "–" if n is None else (f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB")


def _concept_section(inp: ReportInputs, c: str, r: dict) -> str:
    ev = _load(inp.evaluate / f"{c}.json")
    s, b, i = ev.get("student", {}), ev.get("base_without_adapter", {}), ev.get("identity", {})
    paired = ev.get("paired", {})

    def cells(key: str, sub: str, nd: int, ci: bool = False) -> str:
        out = []
        for j, m in enumerate((s, i, b)):
            x = m.get(key, {})
            v = _interval(x, nd) if ci and "ci95" in x else _p(x.get(sub), nd)
            out.append(f"<td>{'<b>' + v + '</b>' if j == 0 else v}</td>")
        return "".join(out)

    prompt = ev.get("prompt")
    head = f"<h2 id='{html.escape(c)}'>{html.escape(c)}</h2>" + (
        f"<p class='prompt'>“{html.escape(prompt)}”</p>" if prompt else ""
    )
    if not ev:
        return f"<section>{head}<p class='missing'>{html.escape(c)}: not evaluated yet</p></section>"
    d_id = _interval(paired.get("student_minus_identity", {}).get("lpips"), signed=True)
    d_base = _interval(paired.get("student_minus_base_without_adapter", {}).get("lpips"), signed=True)
    k_id = _interval(paired.get("student_minus_identity", {}).get("kid"), 4, signed=True)
    k_base = _interval(paired.get("student_minus_base_without_adapter", {}).get("kid"), 4, signed=True)
    fid_row = f"<tr><td>FID ↓</td>{cells('fid', 'value', 1)}</tr>" if s.get("fid", {}).get("value") is not None else ""
    facts = [
        f"adapter {r['trainable']:,} trainable numbers ({_kb(r['adapter_bytes'])})" if r["trainable"] else None,
        f"trained {r['train_s']:.0f} s on {r['pairs']} pairs" if r["train_s"] else None,
        f"ONNX vs torch max |Δ| {r['parity']:.1e}" if r["parity"] is not None else None,
        f"ONNX {r['latency_1t']:.0f} ms per image (1 thread)" if r["latency_1t"] else None,
    ]
    return f"""<section>{head}
<p>Test split: {ev.get("test_pairs")} crops from {ev.get("test_photos")} photos. LPIPS and KID: distance to the teacher's
edit, lower is better; intervals are 95 % over test photos.</p>
<table class="fig"><tr><th></th><th>student</th><th>identity (input unchanged)</th><th>base, no adapter</th></tr>
<tr><td>LPIPS ↓</td>{cells("lpips", "mean", 3, ci=True)}</tr>
<tr><td>KID ↓</td>{cells("kid", "value", 4)}</tr>
{fid_row}</table>
<p>Student − identity, LPIPS: {html.escape(d_id)}; student − base: {html.escape(d_base)} (paired, same crops).
Student − identity, KID: {html.escape(k_id)}; student − base: {html.escape(k_base)}.</p>
<p class="facts">{html.escape("; ".join(f for f in facts if f))}</p>
<h3>input | teacher | base (no adapter) | student</h3>{_img(inp.evaluate / f"{c}.png", c)}
<details><summary>training curves</summary>{_img(inp.finetune / c / "curves.png", c + " curves")}</details></section>"""


SUMMARY_COLUMNS = [
    ("concept", "concept"),
    ("lpips", "LPIPS student ↓"),
    ("lpips_identity", "identity"),
    ("lpips_base", "base"),
    ("lpips_vs_identity", "student − identity [95 %]"),
    ("kid", "KID student ↓"),
    ("adapter_bytes", "adapter"),
]


def write_report(inp: ReportInputs, concepts: list[str], out_html: Path, out_md: Path) -> None:
    from pipeline.core.io import atomic_write_text

    rows, s = concept_rows(inp, concepts), summary(inp)
    fmt = {"lpips": 3, "lpips_identity": 3, "lpips_base": 3, "kid": 4}

    def cell(r: dict, k: str) -> str:
        if k == "concept":
            return f"<a href='#{html.escape(r[k])}'>{html.escape(r[k])}</a>"
        if k == "adapter_bytes":
            return _kb(r[k])
        return html.escape(_p(r[k], fmt[k]) if k in fmt else (r[k] or "–"))

    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in SUMMARY_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{cell(r, k)}</td>" for k, _ in SUMMARY_COLUMNS) + "</tr>" for r in rows)
    sections = "".join(_concept_section(inp, c, r) for c, r in zip(concepts, rows))
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>e2gan report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>*{{box-sizing:border-box}}body{{font-family:sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;line-height:1.4}}
table{{border-collapse:collapse;margin:.8em 0;max-width:100%}}td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%;height:auto;display:block}}
.prompt{{font-style:italic;color:#444;margin-top:-.6em}}.facts{{color:#444}}.missing{{color:#a00}}
section{{border-top:1px solid #ddd;margin-top:1.5em}}details{{margin:.5em 0}}</style></head><body>
<h1>e2gan report</h1>
<p>{len(concepts)} concepts, each a small adapter on one shared base model (base concepts:
{html.escape(", ".join(s["base"]))}). Every figure below is on test photos that no training or choice has seen.</p>
<table><tr>{head}</tr>{body}</table>
{sections}
<section><h2>How the adapters were made</h2>
<p>Calibration concepts: {html.escape(", ".join(s["calibration"]))}. Crucial layer groups:
{html.escape(", ".join(s["crucial_groups"]))}. LoRA parameters per concept: {s["lora_params"]}.</p>
<h3>Base model</h3>{_img(inp.base_samples, "base samples")}
<h3>Layer importance</h3>{_img(inp.layers.parent / "importance.png", "layer importance")}
<h3>Ranks</h3>{_img(inp.ranks.parent / "ranks.png", "ranks")}</section>
</body></html>"""
    atomic_write_text(out_html, doc)
    columns = [(k, t) for k, t in COLUMNS if any(r[k] is not None for r in rows) or not k.startswith("fid")]
    md = [
        "# e2gan summary",
        "",
        f"Base: {', '.join(s['base'])}; calibration: {', '.join(s['calibration'])}; "
        f"crucial groups: {', '.join(s['crucial_groups'])}; LoRA params per concept: {s['lora_params']}.",
        "",
        "Per concept, on the test photos (intervals: 95 % bootstrap over photos; Δ: student minus the other model "
        "on the same crops):",
        "",
        "| " + " | ".join(t for _, t in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    md += ["| " + " | ".join(_f(r[k]) for k, _ in columns) + " |" for r in rows]
    atomic_write_text(out_md, "\n".join(md) + "\n")
