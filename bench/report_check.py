"""Open reports/index.html in headless chromium: it must render with no failed requests, every image
must decode, and a screenshot is written.

Run (after `make run`; needs `chromium`, e.g. `apt-get install chromium`):
    python -m bench.report_check  ->  bench/results/report_check.json + bench/results/report.png
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from pipeline.core.io import atomic_write_json
from pipeline.orchestrate.dvc import stage_paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--html", type=Path, default=stage_paths("report")["html"])
    ap.add_argument("--png", type=Path, default=Path("bench/results/report.png"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/report_check.json"))
    args = ap.parse_args()
    browser = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if browser is None:
        raise SystemExit("no chromium found: install it (Debian: apt-get install chromium) and rerun")
    text = args.html.read_text()
    srcs = re.findall(r"<img[^>]*src='([^']+)'", text)
    external = [s for s in srcs if not s.startswith("data:")] + re.findall(r"<(?:script|link)\b[^>]*>", text)
    decoded = 0
    for s in srcs:
        if s.startswith("data:image/png;base64,"):
            Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
            decoded += 1
    args.png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1400,4000",
                f"--screenshot={args.png.resolve()}",
                args.html.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    failed = [line for line in res.stderr.splitlines() if "Failed to load resource" in line or "net::ERR" in line]
    result = {
        "html": str(args.html),
        "images": len(srcs),
        "images_decoded": decoded,
        "external_refs": external,
        "failed_requests": failed,
        "browser": browser,
        "exit": res.returncode,
        "screenshot": str(args.png),
        "screenshot_size": list(Image.open(args.png).size) if args.png.is_file() else None,
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))
    if res.returncode or failed or external or decoded != len(srcs) or not args.png.is_file():
        raise SystemExit(1)


if __name__ == "__main__":
    main()
