"""The browser demo: the server's file whitelist and web bundle, and the page end to end in real headless
Chromium (playwright-core): a concept's adapter, output curve and outline gate patched onto the base model in the
page give Python onnxruntime's output; bad input shows clear messages."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bench.demo_e2e import make_photo, run, synthetic_models
from pipeline.config import load_params
from pipeline.deploy.demo import ORT_DIST, DemoError, make_server, web_bundle
from pipeline.deploy.export import ort_session

PROMPTS = {"winter": "make it winter with falling snow", "cartoon": "turn it into a cartoon"}  # cartoon: not exported


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return synthetic_models(tmp_path_factory.mktemp("demo") / "models")


def test_web_bundle_runs_like_the_base_model(models, tmp_path):
    """The external-data form the page patches is the same model: identical outputs, and the index
    points at each tensor's bytes."""
    folder = web_bundle(models / "base" / "model.onnx", tmp_path)
    bundle = json.loads((folder / "index.json").read_text())
    index = bundle["tensors"]
    tone = load_params().finetune_lora
    assert bundle["tone_window"] == tone.tone_window  # what the page checks a concept's outline gate against
    assert index["G.tone.values"]["shape"] == [3 + (tone.tone_window > 0), tone.tone_knots + 1]
    weights = (folder / "weights.bin").read_bytes()
    assert {"tokens", "mask", "G.ds.conv.weight"} <= set(index)
    t = index["tokens"]
    assert t["shape"][1] == 32 and t["length"] == 4 * int(np.prod(t["shape"]))
    mask = np.frombuffer(weights, np.float32, count=32, offset=index["mask"]["offset"])
    assert mask[:6].tolist() == [1.0] * 6 and mask[6:].sum() == 0  # the base prompt: 6 tokens, padded to 32
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 256, 256)).astype(np.float32)
    a = ort_session(models / "base" / "model.onnx").run(None, {"image": x})[0]
    b = ort_session(folder / "model.onnx").run(None, {"image": x})[0]
    assert np.array_equal(a, b)
    assert web_bundle(models / "base" / "model.onnx", tmp_path) == folder  # cached by content


def test_web_bundle_bad_base(tmp_path):
    with pytest.raises(DemoError, match="no base model .* export_base_onnx"):
        web_bundle(tmp_path / "missing.onnx", tmp_path / "out")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(DemoError, match="not a readable ONNX model"):
        web_bundle(tmp_path / "bad.onnx", tmp_path / "out")


@pytest.fixture
def server(models, tmp_path):
    if not (ORT_DIST / "ort.all.min.mjs").is_file():
        pytest.fail("the demo's npm packages are missing: run 'make demo-deps' (make test does)")
    srv = make_server(models, PROMPTS, port=0, cache=tmp_path / "cache")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_server_serves_only_its_whitelist(server, models):
    assert server.startswith("http://127.0.0.1:")
    status, body, headers = _get(server + "/")
    assert status == 200 and b"app.js" in body
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"  # threads in WebAssembly
    status, body, _ = _get(server + "/api/concepts")
    concepts = {c["name"]: c for c in json.loads(body)["concepts"]}
    assert concepts["winter"]["adapter"] and not concepts["cartoon"]["adapter"] and not concepts["cartoon"]["model"]
    assert (
        _get(server + "/models/winter/adapter.safetensors")[1]
        == (models / "winter" / "adapter.safetensors").read_bytes()
    )
    assert _get(server + "/ort/ort-wasm-simd-threaded.wasm")[2]["Content-Type"] == "application/wasm"
    for bad in (
        "/models/..%2F..%2Fparams.yaml",
        "/../params.yaml",
        "/models/winter/../../params.yaml",
        "/params.yaml",
        "/models/Bad%20Name/adapter.safetensors",
        "/models/winter/secret.txt",
        "/ort/..%2F..%2Fpackage.json",
        "/models/base/../../pyproject.toml",
    ):
        status, body, _ = _get(server + bad)
        assert status in (400, 404), bad
        assert b"[project]" not in body and b"concepts:" not in body


def test_missing_front_end_packages_is_a_clear_error(monkeypatch, models, tmp_path):
    import pipeline.deploy.demo as demo

    monkeypatch.setattr(demo, "ORT_DIST", tmp_path / "nowhere")
    with pytest.raises(DemoError, match="make demo-deps"):
        demo.make_server(models, PROMPTS, port=0, cache=tmp_path)


@pytest.mark.slow
def test_demo_in_headless_chromium(models, tmp_path, photo_paths):
    for need in ("node", "chromium"):
        if shutil.which(need) is None:
            pytest.fail(f"{need} is not installed: 'make test' installs it (make browser / demo-deps)")
    photo = make_photo(tmp_path / "photo.png", photo_paths[0])
    r = run(models, photo, "winter", "cartoon", tmp_path / "out", tmp_path / "cache")
    assert r["input_pixels_max_diff"] == 0  # the page saw the photo's exact pixels
    assert r["browser_vs_python_max_abs_diff"] <= 1e-3, r["browser_vs_python_max_abs_diff"]
    assert r["output_range"][1] - r["output_range"][0] > 0.5  # a real image, not a constant
    assert r["browser"]["how"] == "base + adapter" and r["browser"]["fps"] > 0
    assert r["failed_requests"] == [] and r["page_errors"] == [] and r["console_errors"] == []
    assert "is not an image" in r["messages"]["not_an_image"]
    assert "No exported model for 'cartoon'" in r["messages"]["missing_model"]
    assert "export_onnx@cartoon" in r["messages"]["missing_model"]
    assert "Camera permission was refused" in r["messages"]["camera_refused"]
    assert "frames/s (camera" in r["camera_fps_text"]
    assert (tmp_path / "out" / "demo.png").stat().st_size > 10_000
