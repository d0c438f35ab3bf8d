"""The HTML report is self-contained: inline images only, no scripts or external links; tables filled."""

from __future__ import annotations

import json
import re

import numpy as np

from pipeline.core.images import save_png
from pipeline.evaluate.report import ReportInputs, write_report


def test_report_is_self_contained(tmp_path):
    (tmp_path / "reports/evaluate").mkdir(parents=True)
    (tmp_path / "reports/finetune_lora/demo").mkdir(parents=True)
    ev = {
        "split": "test",
        "test_pairs": 10,
        "test_photos": 3,
        "student": {
            "fid": {"value": 12.5},
            "kid": {"value": 0.01},
            "lpips": {"mean": 0.2, "ci95": {"low": 0.15, "high": 0.25}},
            "psnr": {"mean": 20.0},
            "ssim": {"mean": 0.7},
        },
        "base_without_adapter": {"lpips": {"mean": 0.3}, "fid": {"value": 30.0}},
        "identity": {"lpips": {"mean": 0.4}},
        "paired": {
            "student_minus_base_without_adapter": {
                "lpips": {"mean": -0.1, "ci95": {"low": -0.15, "high": -0.05}},
                "kid": {"mean": 0.002, "ci95": {"low": -0.001, "high": 0.004}},
            },
            "student_minus_identity": {"lpips": {"mean": -0.2, "ci95": {"low": -0.3, "high": -0.1}}},
        },
    }
    (tmp_path / "reports/evaluate/demo.json").write_text(json.dumps(ev))
    (tmp_path / "reports/finetune_lora/demo/metrics.json").write_text(
        json.dumps(
            {"trainable_params": 1234, "adapter_bytes": 5000, "train_seconds": 9.5, "pairs_used": 5, "pairs_total": 10}
        )
    )
    save_png(np.zeros((8, 16, 3), np.uint8), tmp_path / "reports/evaluate/demo.png")
    r = tmp_path / "reports"
    inputs = ReportInputs(
        r / "select_base.json",
        r / "train_base/samples.png",
        r / "analyze_layers/table.json",
        r / "search_ranks/table.json",
        r / "evaluate",
        r / "finetune_lora",
        r / "export_onnx",
    )
    write_report(inputs, ["demo", "missing"], tmp_path / "index.html", tmp_path / "summary.md")
    html = (tmp_path / "index.html").read_text()
    assert not re.search(r"<script|<link|src=['\"]http", html)
    assert html.count("src='data:image/png;base64,") == 1 and "not produced yet" in html
    # per concept: student beside the identity and the base, intervals, the facts line; then the method tables
    assert "<td><b>0.200 [0.150, 0.250]</b></td><td>0.400</td><td>0.300</td>" in html
    assert (
        "student − identity, LPIPS: -0.200 [-0.300, -0.100]; student − base: -0.100 [-0.150, -0.050]"
        in html.replace("Student", "student")
    )
    assert "adapter 1,234 trainable numbers (5 kB); trained 10 s on 5/10 pairs" in html
    assert "<td><a href='#demo'>demo</a></td><td>0.200</td><td>0.400</td><td>0.300</td>" in html
    assert "missing: not evaluated yet" in html
    assert "student − base: +0.0020 [-0.0010, +0.0040] (tie)" in html.replace("Student", "student")  # KID
    assert html.index("<h2 id='demo'>") < html.index("How the adapters were made")
    assert "<td>FID ↓</td><td><b>12.5</b>" in html  # a FID where the set had one
    assert "test photos" in html
    md = (tmp_path / "summary.md").read_text()
    assert "| demo | 10 | 3 | 0.2000 | 0.1500 – 0.2500 |" in md and "| missing |" in md
    assert "+0.0020 [-0.0010, +0.0040]" in md  # the paired KID column
