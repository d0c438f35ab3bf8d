"""`e2gan demo`: a local web page that runs the exported concept models in the browser (onnxruntime-web).

The page (pipeline/deploy/web/: index.html, app.js, style.css; shipped as package data) loads ONE base model and, per concept, only the small adapter
artifact (models/onnx/<concept>/adapter.safetensors: LoRA factors + text tokens). It adds the LoRA
deltas to the base weights in the browser and starts an onnxruntime-web session with them, so a
browser downloads ~6.6 MB once and ~0.1 MB per concept. To make the weights patchable there, the
server serves the base model in ONNX's external-data form (`web_bundle`): the graph, one weights file,
and an index of where each tensor lies in it. A concept with no adapter but a full `model.onnx` is run
as that model.

The server binds to 127.0.0.1, serves only whitelisted files (concept names are validated slugs), and
sends the cross-origin isolation headers that multi-threaded WebAssembly needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import os
import re
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline.core.errors import E2GANError
from pipeline.core.io import atomic_dir, atomic_write_json
from pipeline.core.slug import is_slug

log = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parent / "web"  # the page, package data
# onnxruntime-web from the npm registry (`make demo-deps`: npm ci in demo/), or E2GAN_ORT_WEB
ORT_DIST = Path(os.environ.get("E2GAN_ORT_WEB") or Path.cwd() / "demo" / "node_modules" / "onnxruntime-web" / "dist")
PAGE_FILES = {"index.html", "app.js", "style.css"}
CONCEPT_FILES = {"adapter.safetensors", "model.onnx", "card.json"}
BASE_FILES = {"model.onnx", "weights.bin", "index.json", "card.json"}
BUNDLE_FORMAT = b"e2gan web bundle 2: index.json has tone_window"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # whole names only (fullmatch)


class DemoError(E2GANError):
    """The demo cannot start (front-end packages or the base model missing)."""


def web_bundle(base_onnx: Path, out: Path) -> Path:
    """The base ONNX model with every float initializer in one external-data file `weights.bin`, plus
    `index.json` (tensor name -> byte offset, length, shape; the outline gate's box) so the page can patch weights
    in place. Written once per base model and bundle format (keyed by their hash); returns the folder."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    from pipeline.deploy.artifact import tone_window_of

    base_onnx = Path(base_onnx)
    if not base_onnx.is_file():
        raise DemoError(f"no base model at {base_onnx}: run 'dvc repro export_base_onnx' first")
    digest = hashlib.sha256(base_onnx.read_bytes() + BUNDLE_FORMAT).hexdigest()[:16]  # a new format: a new folder
    folder = Path(out) / digest
    if (folder / "index.json").is_file():
        return folder
    try:
        model = onnx.load(str(base_onnx))
    except Exception as e:
        raise DemoError(
            f"{base_onnx} is not a readable ONNX model ({str(e).splitlines()[0][:200]}); "
            "rerun 'dvc repro -f export_base_onnx'"
        ) from None
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    with atomic_dir(folder) as tmp:
        onnx.save_model(model, str(tmp / "model.onnx"))
        index = {}
        for init in model.graph.initializer:
            info = {e.key: e.value for e in init.external_data}
            index[init.name] = {
                "offset": int(info.get("offset", 0)),
                "length": int(info["length"]),
                "shape": list(init.dims),
                "dtype": onnx.TensorProto.DataType.Name(init.data_type),
            }
        atomic_write_json(
            tmp / "index.json",
            # tone_window: the outline-gate box the base was exported with, which a concept's curve must match
            {"source": str(base_onnx), "sha256_16": digest, "tone_window": tone_window_of(model), "tensors": index},
        )
    return folder


def concepts(prompts: dict[str, str], models: Path) -> list[dict]:
    """The given concepts (name -> prompt, e.g. params.yaml's) and every exported one, with what the page can
    load for each."""
    names = dict(prompts)
    for d in sorted(models.glob("*/card.json")):  # exported concepts not (or no longer) in params.yaml
        if d.parent.name != "base" and is_slug(d.parent.name):
            names.setdefault(d.parent.name, json.loads(d.read_text()).get("prompt", ""))
    out = []
    for name, prompt in names.items():
        folder = models / name
        out.append(
            {
                "name": name,
                "prompt": prompt,
                "adapter": (folder / "adapter.safetensors").is_file(),
                "model": (folder / "model.onnx").is_file(),
            }
        )
    return out


class DemoHandler(SimpleHTTPRequestHandler):
    """Static files from a whitelist; never a directory listing or a path outside the known folders."""

    def __init__(self, *args, prompts: dict[str, str], models: Path, bundle: Path, **kw):
        self.prompts, self.models, self.bundle = prompts, models, bundle
        super().__init__(*args, directory=str(WEB), **kw)

    def log_message(self, fmt: str, *args) -> None:  # quiet; errors still go to the log
        log.debug("demo: " + fmt, *args)

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def _file(self, path: Path) -> None:
        if not path.is_file():
            return self._error(HTTPStatus.NOT_FOUND, f"{path.name} not found")
        ctype = {
            ".wasm": "application/wasm",
            ".mjs": "text/javascript",
            ".js": "text/javascript",
            ".onnx": "application/octet-stream",
            ".bin": "application/octet-stream",
            ".safetensors": "application/octet-stream",
        }.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        data = path.read_bytes()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype or "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, obj, status: HTTPStatus = HTTPStatus.OK) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json({"error": message}, status)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        parts = [unquote(p) for p in urlparse(self.path).path.split("/") if p]
        if any(not _SAFE_NAME.fullmatch(p) for p in parts):
            return self._error(HTTPStatus.BAD_REQUEST, "bad path")
        if not parts:
            return self._file(WEB / "index.html")
        if len(parts) == 1 and parts[0] in PAGE_FILES:
            return self._file(WEB / parts[0])
        if len(parts) == 2 and parts[0] == "ort":
            return self._file(ORT_DIST / parts[1])
        if parts == ["api", "concepts"]:
            return self._json(
                {"concepts": concepts(self.prompts, self.models), "base": (self.bundle / "index.json").is_file()}
            )
        if len(parts) == 3 and parts[:2] == ["models", "base"] and parts[2] in BASE_FILES:
            src = self.models / "base" / "card.json" if parts[2] == "card.json" else self.bundle / parts[2]
            return self._file(src)
        if len(parts) == 3 and parts[0] == "models" and is_slug(parts[1]) and parts[2] in CONCEPT_FILES:
            return self._file(self.models / parts[1] / parts[2])
        return self._error(HTTPStatus.NOT_FOUND, "not found")

    def do_HEAD(self) -> None:  # noqa: N802
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "GET only")


def check_installed() -> None:
    if not (ORT_DIST / "ort.all.min.mjs").is_file():
        raise DemoError(
            f"the demo's front-end packages are not installed ({ORT_DIST} is missing): "
            "run 'make demo-deps' (npm ci in demo/) in the project folder, or set E2GAN_ORT_WEB to an "
            "onnxruntime-web dist folder"
        )


def make_server(
    models: Path, prompts: dict[str, str] | None = None, port: int = 8765, cache: Path | None = None
) -> ThreadingHTTPServer:
    """The demo server on 127.0.0.1:`port` (0 = any free port) for the exported models in `models`; call
    .serve_forever()."""
    check_installed()
    models = Path(models).resolve()
    from pipeline.core.assets import cache_dir

    bundle = web_bundle(models / "base" / "model.onnx", Path(cache) if cache else cache_dir() / "demo")
    handler = partial(DemoHandler, prompts=dict(prompts or {}), models=models, bundle=bundle)
    return ThreadingHTTPServer(("127.0.0.1", port), handler)
