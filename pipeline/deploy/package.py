"""export_onnx@C and export_base_onnx: a concept's merged generator as checked ONNX models (fixed and dynamic
batch, fp16, int8), its adapter artifact for the shared base model, and the model cards."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from pipeline.core.frozen import FrozenConfig
from pipeline.core.io import atomic_dir, atomic_write_json, sha256_file
from pipeline.core.metrics import lpips_distance
from pipeline.core.tensors import array_to_image, image_to_array
from pipeline.data.dataset import concept_prompt, split_pairs
from pipeline.deploy.artifact import adapter_artifact, apply_artifact, mark_tone_window, pad_tokens
from pipeline.deploy.export import (
    ExportError,
    ImageOnly,
    check_onnx,
    concept_model,
    export_onnx,
    onnx_outputs,
    ort_latency,
    run_onnx,
    to_fp16,
    to_int8,
)

IO_SPEC = {
    "input": {
        "name": "image",
        "dtype": "float32",
        "range": [-1, 1],
        "normalisation": "x / 127.5 - 1 on RGB uint8",
        "layout": "NCHW RGB",
    },
    "output": {"name": "edited", "range": [-1, 1], "denormalisation": "(y + 1) * 127.5, clipped to 0..255"},
}


class ExportOnnxConfig(FrozenConfig):
    """export_onnx@C: the merged concept model as ONNX (fixed 1x3xSxS and dynamic batch), fp16 and int8."""

    size: int = Field(256, ge=16, le=2048)  # the fixed input side; 256 as in the paper
    opset: int = Field(17, ge=13, le=21)
    parity_tol: float = Field(1e-3, gt=0)  # max |onnxruntime - torch| on test photos (fp32)
    parity_images: int = Field(8, ge=1)  # test crops, spread over all test photos, for parity and variants
    quantize: bool = True  # also write fp16 and int8 (static, calibrated) variants
    calibration_images: int = Field(16, ge=1)  # int8 calibration: val crops, spread over all val photos
    latency_runs: int = Field(0, ge=0)  # onnxruntime latency per variant and thread count (0: not measured here;
    # the architecture's latency is one figure for every concept: python -m bench.generator_latency)
    max_tokens: int = Field(32, ge=1)  # text tokens in the base ONNX model (prompts are padded and masked)
    opencv: bool = True  # every ONNX file must also run in OpenCV's DNN module and match onnxruntime:
    opencv_images: int = Field(2, ge=1)  # ... on this many of the parity crops (each from another test photo)
    opencv_tol: float = Field(1e-3, gt=0)  # fp32 (and the adapter-patched base): max |OpenCV - onnxruntime|
    opencv_ratio: float = Field(1.5, gt=0)  # fp16, int8: OpenCV's mean |diff| to fp32 <= this x onnxruntime's ...
    opencv_floor: float = Field(1e-3, ge=0)  # ... + this

    @field_validator("size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"must be a multiple of 16 (the generator downsamples 16x); try {round(v / 16) * 16}")
        return v


def _resize(images: list[np.ndarray], size: int) -> list[np.ndarray]:
    from PIL import Image

    return [
        np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) if im.shape[0] != size else im
        for im in images
    ]


def check_parity(
    model: torch.nn.Module, fixed: Path, dynamic: Path, x: np.ndarray, tol: float, where: str
) -> tuple[dict, np.ndarray]:
    """onnxruntime vs torch on the same inputs (the fixed model one image at a time, the dynamic one as a batch);
    an ExportError when either differs by more than `tol`. Returns (the parity record, the fixed outputs)."""
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    fixed_out = onnx_outputs(fixed, x)  # one image per run: the fixed model's batch is 1
    parity = {
        "images": len(x),
        "max_abs_diff": float(np.abs(fixed_out - ref).max()),
        "max_abs_diff_dynamic_batch": float(np.abs(onnx_outputs(dynamic, x) - ref).max()),
        "tolerance": tol,
    }
    if max(parity["max_abs_diff"], parity["max_abs_diff_dynamic_batch"]) > tol:
        raise ExportError(
            f"{where}: onnxruntime differs from torch by {parity} > {tol}; the export is wrong, nothing was written"
        )
    return parity, fixed_out


def check_artifact(artifact: Path, base_onnx: Path, fixed: Path, x: np.ndarray, fixed_out: np.ndarray) -> dict:
    """The adapter artifact applied to the base ONNX model must give the directly exported model."""
    with tempfile.TemporaryDirectory() as td:
        patched = apply_artifact(base_onnx, artifact, Path(td) / "patched.onnx")
        diff = float(np.abs(onnx_outputs(patched, x) - fixed_out).max())
    out = {"bytes": artifact.stat().st_size, "model_bytes": fixed.stat().st_size, "max_abs_diff_vs_direct": diff}
    out["share_of_model"] = out["bytes"] / out["model_bytes"]
    return out


def check_opencv(
    files: dict[str, Path], x: np.ndarray, fp32_out: np.ndarray, cfg: ExportOnnxConfig, where: str
) -> dict:
    """Each ONNX file (name -> path) through OpenCV's DNN module against onnxruntime on the same inputs; an
    ExportError when one fails to load or differs. fp32 files: max |OpenCV - onnxruntime| <= `opencv_tol`. fp16
    and int8 files (names ending so): the two runtimes' reduced-precision kernels round differently, so OpenCV's
    output must stay about as close to the fp32 model's (`fp32_out`, onnxruntime) as onnxruntime's own output of
    that file does: mean |diff| <= `opencv_ratio` x onnxruntime's + `opencv_floor`."""
    from pipeline.deploy.export import opencv_outputs

    out = {}
    for name, path in files.items():
        try:
            got = opencv_outputs(path, x)
        except ExportError as e:
            raise ExportError(f"{where}: {e}; nothing was written") from None
        ort = onnx_outputs(path, x)
        diff = np.abs(got - ort)
        rec = {"images": len(x), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
        if name.endswith(("fp16", "int8")):
            vs = {"opencv": float(np.abs(got - fp32_out).mean()), "onnxruntime": float(np.abs(ort - fp32_out).mean())}
            rec["mean_abs_diff_vs_fp32"] = vs
            rec["tolerance"] = {"ratio": cfg.opencv_ratio, "floor": cfg.opencv_floor}
            ok = vs["opencv"] <= cfg.opencv_ratio * vs["onnxruntime"] + cfg.opencv_floor
        else:
            ok, rec["tolerance"] = rec["max_abs_diff"] <= cfg.opencv_tol, {"max": cfg.opencv_tol}
        if not ok:
            raise ExportError(f"{where}: {path.name} in OpenCV differs from onnxruntime: {rec}; nothing was written")
        out[name] = rec
    return out


def variants(
    fixed: Path,
    folder: Path,
    photos: list[np.ndarray],
    calibration: list[np.ndarray],
    cfg: ExportOnnxConfig,
    threads: list[int],
    fp32_out: np.ndarray | None = None,
) -> dict:
    """fp16 and int8 variants beside fp32: size, LPIPS against the fp32 outputs on `photos`, and onnxruntime
    latency when cfg.latency_runs > 0. int8 is calibrated on `calibration`, which should be other photos
    (export_concept: val; `photos`: test). `fp32_out`: the fp32 model's raw outputs on `photos` where they
    are already known (check_parity's), so it is not run again."""
    fp32_imgs = run_onnx(fixed, photos) if fp32_out is None else [array_to_image(y) for y in fp32_out]
    paths = {"fp32": fixed}
    if cfg.quantize:
        paths["fp16"] = to_fp16(fixed, folder / "model_fp16.onnx")
        paths["int8"] = to_int8(fixed, folder / "model_int8.onnx", calibration)
    out = {}
    for name, path in paths.items():
        out[name] = {
            "bytes": path.stat().st_size,
            # fp32 against itself is 0: its outputs are not run twice
            "lpips_vs_fp32": 0.0
            if name == "fp32"
            else float(np.mean(lpips_distance(run_onnx(path, photos), fp32_imgs))),
        }
        if cfg.latency_runs:
            out[name].update(
                {f"latency_threads_{t}": ort_latency(path, cfg.size, t, cfg.latency_runs) for t in threads}
            )
    return out


def model_card(
    concept: str, prompt: str, cfg: ExportOnnxConfig, base_sha: str, meta: dict, parity: dict, metrics: dict
) -> dict:
    """What an app needs to know about a concept's exported files."""
    shape = [1, 3, cfg.size, cfg.size]
    return {
        "concept": concept,
        "prompt": prompt,
        "files": {
            "model.onnx": "fixed input",
            "model_dynamic.onnx": "dynamic batch",
            **(
                {"model_fp16.onnx": "fp16 inside, fp32 I/O", "model_int8.onnx": "static int8 (QDQ)"}
                if cfg.quantize
                else {}
            ),
            "adapter.safetensors": "LoRA factors + text tokens for the base ONNX model",
        },
        "input": {**IO_SPEC["input"], "shape": shape},
        "output": {**IO_SPEC["output"], "shape": shape},
        "base_sha256": base_sha,
        "text_encoder": meta["text_encoder"],
        "trained_at": meta.get("image_size"),
        "opset": cfg.opset,
        "parity": parity,
        "metrics": metrics,
    }


def export_concept(
    concept: str,
    base_dir: Path,
    base_onnx: Path,
    adapter: Path,
    pairs: Path,
    prompts: Path,
    training_metrics: dict,
    cfg: ExportOnnxConfig,
    out: Path,
) -> dict:
    """Every exported file of a concept into `out` (swapped in atomically, only if every check passes);
    returns the export's metrics (parity, artifact, variants)."""
    from safetensors.torch import save_file

    # 1. the merged model, the test crops it is checked on and the val crops int8 is calibrated on
    model, meta = concept_model(base_dir, adapter, prompts)
    photos = _resize(split_pairs(pairs, "test", cfg.parity_images).inputs, cfg.size)
    calibration = _resize(split_pairs(pairs, "val", cfg.calibration_images).inputs, cfg.size)
    threads = sorted({1, os.cpu_count() or 1})
    m: dict = {"concept": concept, "size": cfg.size, "opset": cfg.opset, "threads": threads}
    m["splits"] = {"parity_and_variants": "test", "int8_calibration": "val"}
    with atomic_dir(out) as tmp:
        # 2. fixed and dynamic-batch fp32 models, checked against torch
        fixed = export_onnx(model, tmp / "model.onnx", cfg.size, cfg.opset)
        dynamic = export_onnx(model, tmp / "model_dynamic.onnx", cfg.size, cfg.opset, dynamic_batch=True)
        x = np.concatenate([image_to_array(im) for im in photos])
        m["parity"], fixed_out = check_parity(model, fixed, dynamic, x, cfg.parity_tol, f"export_onnx@{concept}")
        # 3. the adapter artifact for the shared base model, checked against the direct export
        save_file(adapter_artifact(adapter, model.tokens, model.mask), str(tmp / "adapter.safetensors"))
        m["adapter_artifact"] = check_artifact(tmp / "adapter.safetensors", base_onnx, fixed, x, fixed_out)
        # 4. lower-precision variants and the model card
        m["variants"] = variants(fixed, tmp, photos, calibration, cfg, threads, fixed_out)
        if cfg.opencv:  # a second ONNX consumer: every file, and the base model patched with this adapter
            files = {"fp32": fixed, "dynamic_batch_fp32": dynamic}
            files.update({k: tmp / f"model_{k}.onnx" for k in ("fp16", "int8") if cfg.quantize})
            with tempfile.TemporaryDirectory() as td:
                files["base_patched_with_adapter"] = apply_artifact(
                    base_onnx, tmp / "adapter.safetensors", Path(td) / "patched.onnx"
                )
                n = cfg.opencv_images
                m["opencv"] = check_opencv(files, x[:n], fixed_out[:n], cfg, f"export_onnx@{concept}")
        card = model_card(
            concept,
            concept_prompt(prompts),
            cfg,
            sha256_file(base_dir / "generator.safetensors"),
            meta,
            m["parity"],
            training_metrics,
        )
        atomic_write_json(tmp / "card.json", card)
    return m


def training_summary(metrics: dict) -> dict:
    """finetune_lora's figures (on val photos, as its metrics.json says) that go into the model card."""
    if not metrics:
        return {}
    val = metrics["val"]["lora"]
    return {"split": "val", "lpips": val["lpips"], "psnr": val["psnr"]}


def export_base(
    base_dir: Path,
    prompts: Path,
    constant_from: str,
    cfg: ExportOnnxConfig,
    out: Path,
    tone_knots: int = 0,
    tone_window: int = 0,
) -> None:
    """The base generator as ONNX with every weight a named initializer (what adapter artifacts patch); the text
    constant (any concept's prompt, padded to max_tokens) is replaced by each artifact. With `tone_knots`
    (finetune_lora's), an identity output curve of that many segments that each concept's artifact replaces; with
    `tone_window` an outline gate over that box, which the model's metadata names (artifacts check it)."""
    from pipeline.model.nets.tone import with_tone

    model, meta = concept_model(base_dir, None, prompts)
    if tone_knots:
        with_tone(model.G, tone_knots, tone_window)
    shape = [1, 3, cfg.size, cfg.size]
    with atomic_dir(out) as tmp:
        padded = ImageOnly(model.G, *pad_tokens(model.tokens, model.mask, cfg.max_tokens))
        export_onnx(padded, tmp / "model.onnx", cfg.size, cfg.opset, fold=False)
        if tone_window:
            mark_tone_window(tmp / "model.onnx", tone_window)
        atomic_write_json(
            tmp / "card.json",
            {
                "input": {"name": "image", "shape": shape, "range": [-1, 1], "layout": "NCHW RGB"},
                "output": {"name": "edited", "shape": shape, "range": [-1, 1]},
                "base_sha256": sha256_file(base_dir / "generator.safetensors"),
                "text_encoder": meta["text_encoder"],
                "opset": cfg.opset,
                "text_constant_from": constant_from,
                "max_tokens": cfg.max_tokens,
                "tone_knots": tone_knots,
                "tone_window": tone_window,
                "note": "apply a concept's adapter.safetensors with pipeline.deploy.artifact.apply_artifact",
            },
        )


# ----------------------------------------------------------------------------- phone formats (export_mobile@C)


OPT_IN = (
    "phone formats are opt-in (about two minutes per concept on two cores): set export_mobile.formats in "
    "params.yaml to any of [executorch, litert, coreml] and run 'dvc repro'"
)
FORMAT_NAMES = {"executorch": "executorch (XNNPACK)", "litert": "litert (XNNPACK delegate)"}


class ExportMobileConfig(FrozenConfig):
    """export_mobile@C: the merged concept model in phone formats (pipeline/deploy/mobile.py), checked against torch."""

    # opt-in (params.yaml says why): none by default; any of executorch, litert, coreml
    formats: list[Literal["executorch", "litert", "coreml"]] = Field(default_factory=list)
    # int8 variants: ExecuTorch (XNNPACK quantizer, calibrated on val crops), LiteRT (dynamic range), Core ML (weights)
    int8: bool = True
    parity_tol: float = Field(1e-3, gt=0)  # fp32: max |runtime - torch| on test crops
    int8_max_lpips: float = Field(0.05, gt=0)  # int8: mean LPIPS against the torch model's outputs on test crops
    parity_images: int = Field(8, ge=1)  # test crops, spread over all test photos
    calibration_images: int = Field(16, ge=1)  # int8 calibration: val crops, spread over all val photos
    latency_runs: int = Field(5, ge=1)


def _to_images(y: np.ndarray) -> list[np.ndarray]:
    from pipeline.core.tensors import array_to_image

    return [array_to_image(y[i]) for i in range(len(y))]


def _to_coreml(model, folder: Path, size: int, cfg: ExportMobileConfig) -> dict:
    from pipeline.deploy import mobile

    out = {}
    for name, int8 in [("model.mlpackage", False)] + ([("model_int8.mlpackage", True)] if cfg.int8 else []):
        t0 = time.perf_counter()
        path = mobile.to_coreml(model, folder / name, size, int8_weights=int8)
        out[name] = {
            "format": "coreml (ML Program, fp16 compute)",
            "precision": "int8 weights" if int8 else "fp16",
            "bytes": mobile.file_bytes(path),
            "convert_s": round(time.perf_counter() - t0, 1),
            "check": mobile.check_coreml(path, size),
        }
    return out


def _to_executorch(
    base_dir: Path, adapter: Path, prompts: Path, folder: Path, size: int, files: list, calib: np.ndarray
) -> dict[str, float]:
    """In the side process: the concept model loaded afresh, its ExecuTorch programs written; seconds per file."""
    from pipeline.deploy import mobile

    torch.set_num_threads(1)  # the other core converts the other formats
    model, _ = concept_model(base_dir, adapter, prompts)
    seconds = {}
    for name, precision in files:
        t0 = time.perf_counter()
        mobile.to_executorch(model, folder / name, size, calib if precision == "int8" else None)
        seconds[name] = round(time.perf_counter() - t0, 1)
    return seconds


@contextlib.contextmanager
def _side_process(wanted: bool):
    """One spawned worker process, or this process where a worker cannot start (a daemonic process, such as a Dask
    worker, may not have children) or is not wanted."""
    import multiprocessing as mp
    from concurrent.futures import Executor, Future, ProcessPoolExecutor

    if wanted and not mp.current_process().daemon:
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            yield pool
        return

    class Inline(Executor):
        def submit(self, fn, /, *args, **kwargs):
            f: Future = Future()
            f.set_result(fn(*args, **kwargs))
            return f

    yield Inline()


def export_mobile(
    concept: str,
    base_dir: Path,
    adapter: Path,
    pairs: Path,
    prompts: Path,
    onnx_model: Path,
    cfg: ExportMobileConfig,
    out: Path,
) -> dict:
    """The concept's phone-format models into `out` (swapped in atomically, only if every check passes); returns
    their metrics: per file its bytes, parity (or Core ML's structural check) and latency, beside onnxruntime's
    latency for the concept's fp32 ONNX model measured in the same run."""
    from pipeline.deploy import mobile

    if not cfg.formats:  # opt-in: a card that says so, and nothing converted
        with atomic_dir(out) as tmp:
            atomic_write_json(tmp / "card.json", {"concept": concept, "files": {}, "note": OPT_IN})
        return {"concept": concept, "formats": [], "files": {}, "note": OPT_IN}
    for fmt in cfg.formats:
        mobile.require(fmt)
    check_onnx(onnx_model)
    size = mobile.runner("onnx", onnx_model).size  # the same input size as the concept's ONNX model
    model, _ = concept_model(base_dir, adapter, prompts)
    x = np.concatenate(
        [image_to_array(im) for im in _resize(split_pairs(pairs, "test", cfg.parity_images).inputs, size)]
    )
    calib = np.concatenate(
        [image_to_array(im) for im in _resize(split_pairs(pairs, "val", cfg.calibration_images).inputs, size)]
    )
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    ref_images = _to_images(ref)
    threads = sorted({1, os.cpu_count() or 1})
    m: dict = {"concept": concept, "formats": list(cfg.formats), "size": size, "threads": threads, "files": {}}
    m["splits"] = {"parity": "test", "int8_calibration": "val"}
    where = f"export_mobile@{concept}"
    with atomic_dir(out) as tmp:
        # ExecuTorch's lowering in a second process while this one makes the LiteRT and Core ML files: each
        # toolchain is mostly single-threaded Python, and the two take about as long (two cores: half the time)
        plan = [
            (fmt, precision, name)
            for fmt, precision, name in (
                ("executorch", "fp32", "model.pte"),
                ("executorch", "int8", "model_int8.pte"),
                ("litert", "fp32", "model.tflite"),
                ("litert", "int8 (dynamic range)", "model_int8.tflite"),
            )
            if fmt in cfg.formats and (precision == "fp32" or cfg.int8)
        ]
        et = [(name, precision) for fmt, precision, name in plan if fmt == "executorch"]
        with _side_process(bool(et)) as pool:
            pending = pool.submit(_to_executorch, base_dir, adapter, prompts, tmp, size, et, calib) if et else None
            seconds = {}
            for fmt, precision, name in plan:
                if fmt == "litert":
                    t0 = time.perf_counter()
                    mobile.to_litert(model, tmp / name, size, int8=precision != "fp32")
                    seconds[name] = round(time.perf_counter() - t0, 1)
            coreml = _to_coreml(model, tmp, size, cfg) if "coreml" in cfg.formats else {}
            seconds.update(pending.result() if pending else {})
        files = [(name, tmp / name, fmt, precision, seconds[name]) for fmt, precision, name in plan]
        for name, path, fmt, precision, convert_s in files:
            y = mobile.outputs(fmt, path, x)
            rec = {
                "format": FORMAT_NAMES[fmt],
                "precision": precision,
                "bytes": mobile.file_bytes(path),
                "convert_s": convert_s,
                "parity": {
                    "images": len(x),
                    "max_abs_diff": float(np.abs(y - ref).max()),
                    "lpips_vs_torch": float(np.mean(lpips_distance(_to_images(y), ref_images))),
                },
            }
            bad = (
                rec["parity"]["max_abs_diff"] > cfg.parity_tol
                if precision == "fp32"
                else rec["parity"]["lpips_vs_torch"] > cfg.int8_max_lpips
            )
            if bad:
                raise mobile.MobileExportError(
                    f"{where}: {name} differs from torch ({rec['parity']}; tolerance: max |diff| {cfg.parity_tol} "
                    f"for fp32, LPIPS {cfg.int8_max_lpips} for int8); the export is wrong, nothing was written"
                )
            rec["latency"] = {
                f"threads_{t}": mobile.latency(mobile.runner(fmt, path, t), x[:1], cfg.latency_runs) for t in threads
            }
            m["files"][name] = rec
        m["files"].update(coreml)
        onnx_rec = {"bytes": onnx_model.stat().st_size}
        onnx_rec["latency"] = {
            f"threads_{t}": mobile.latency(mobile.runner("onnx", onnx_model, t), x[:1], cfg.latency_runs)
            for t in threads
        }
        m["onnxruntime_fp32"] = onnx_rec
        for rec in m["files"].values():
            if "latency" in rec:
                rec["latency_vs_onnxruntime"] = {
                    k: round(v["median_ms"] / onnx_rec["latency"][k]["median_ms"], 3) for k, v in rec["latency"].items()
                }
        atomic_write_json(
            tmp / "card.json",
            {
                "concept": concept,
                "prompt": concept_prompt(prompts),
                "input": {**IO_SPEC["input"], "shape": [1, 3, size, size]},
                "output": {**IO_SPEC["output"], "shape": [1, 3, size, size]},
                "base_sha256": sha256_file(base_dir / "generator.safetensors"),
                "files": m["files"],
                "onnxruntime_fp32_same_run": onnx_rec,
                "shared_base": "ExecuTorch, LiteRT and Core ML files are whole models per concept (weights inside); "
                "only the ONNX route patches one shared base with the concept's adapter artifact",
            },
        )
    return m
