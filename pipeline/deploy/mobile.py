"""Phone formats of a concept's merged generator, each checked before it is written:

- ExecuTorch `.pte` (XNNPACK backend; fp32, and int8 through the XNNPACK quantizer calibrated on real crops),
  run here by ExecuTorch's runtime for parity and latency;
- LiteRT `.tflite` (litert-torch; the int8 variant by ai-edge-quantizer's dynamic-range recipe: int8 weights,
  activations quantized on the fly), run here by the LiteRT interpreter (XNNPACK delegate) for parity and latency;
- Core ML `.mlpackage` (ML Program, fp16 compute; coremltools), which has no runtime on Linux: checked
  structurally (the spec loads, its input and output names and shapes, its operations).

The models are exported from `portable.rewritten(model, portable=True)`, which spells out the layers XNNPACK
and the converters reject; parity is always measured against the unrewritten torch model.
"""

from __future__ import annotations

import importlib
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.errors import E2GANError
from pipeline.core.io import atomic_path

if TYPE_CHECKING:  # torch is imported where a model is exported or ExecuTorch runs: `e2gan apply` with onnx needs none
    from torch import nn

FORMATS = ("executorch", "litert", "coreml")
SUFFIX = {"executorch": ".pte", "litert": ".tflite", "coreml": ".mlpackage"}
# the package each format (or task) needs, and how to get it
NEEDS = {
    "executorch": ("executorch", "run 'make install' (it is one of e2gan's dependencies) or pip install executorch"),
    "litert": (
        "litert_torch",
        "run 'make install', or pip install --no-deps -r requirements-litert.txt (why --no-deps: that file says)",
    ),
    "litert_runtime": (
        "ai_edge_litert",
        "run 'make install' (it is one of e2gan's dependencies) or pip install ai-edge-litert",
    ),
    "coreml": ("coremltools", "run 'make install' (it is one of e2gan's dependencies) or pip install coremltools"),
}


class MobileExportError(E2GANError):
    """A phone-format model could not be made, does not match torch, or is missing or corrupt."""


def available(what: str) -> bool:
    return importlib.util.find_spec(NEEDS[what][0]) is not None


def require(what: str) -> None:
    """An E2GANError naming the missing package and the command that installs it."""
    if not available(what):
        pkg, fix = NEEDS[what]
        raise MobileExportError(f"the {what.replace('_', ' ')} format needs the '{pkg}' package: {fix}")


# ----------------------------------------------------------------------------- ExecuTorch


def to_executorch(model: "nn.Module", path: Path, size: int, calibration: np.ndarray | None = None) -> Path:
    """`model` (image-only, 1x3xSxS in [-1, 1]) as an ExecuTorch program lowered to XNNPACK; with
    `calibration` (N, 3, S, S) its convolutions are quantized to int8 first (PT2E, XNNPACK's symmetric
    per-channel scheme)."""
    require("executorch")
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from pipeline.deploy.portable import rewritten

    example = (torch.zeros(1, 3, size, size),)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(rewritten(model, portable=True).eval(), example)
        if calibration is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            # convolutions only (the generator's cost; XNNPACK fails to compile the quantized attention), chosen
            # by operator: a module-type filter does not reach the weights on an exported graph, which left them fp32
            quantizer = XNNPACKQuantizer().set_operator_type(
                torch.ops.aten.conv2d.default, get_symmetric_quantization_config(is_per_channel=True)
            )
            prepared = prepare_pt2e(program.module(), quantizer)
            for i in range(len(calibration)):
                prepared(torch.from_numpy(calibration[i : i + 1]))
            program = torch.export.export(convert_pt2e(prepared), example)
        buffer = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer)
    return path


def _executorch_method(path: Path, threads: int = 0):
    require("executorch")
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    if not Path(path).is_file():
        raise MobileExportError(f"{path}: no ExecuTorch program; run 'dvc repro export_mobile' for this concept")
    if threads:
        _unsafe_reset_threadpool(threads)
    try:
        return Runtime.get().load_program(Path(path)).load_method("forward")
    except Exception as e:  # the runtime raises RuntimeError with its own code for a corrupt program
        raise MobileExportError(
            f"{path}: not a loadable ExecuTorch program ({str(e).strip().splitlines()[0][:160]}); "
            "delete it and rerun 'dvc repro export_mobile'"
        ) from None


def outputs(fmt: str, path: Path, x: np.ndarray) -> np.ndarray:
    """(N, 3, S, S) float32 in [-1, 1] -> a runtime's outputs, one image per call (the models are 1x3xSxS)."""
    run = runner(fmt, path)
    return np.concatenate([run(x[i : i + 1]) for i in range(len(x))])


# ----------------------------------------------------------------------------- LiteRT


def to_litert(model: "nn.Module", path: Path, size: int, int8: bool = False) -> Path:
    """`model` (image-only, 1x3xSxS in [-1, 1]) as a LiteRT flatbuffer (litert-torch); with `int8` its weights
    are int8 per channel and activations are quantized on the fly (ai-edge-quantizer's dynamic-range recipe,
    which needs no calibration; full int8 fails in the interpreter on the normalisation's division)."""
    require("litert")
    import litert_torch
    import torch

    from pipeline.deploy.portable import rewritten

    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad(), tempfile.TemporaryDirectory(dir=path.parent) as td:
        warnings.simplefilter("ignore")
        plain = Path(td) / "model.tflite"
        litert_torch.convert(rewritten(model, portable=True).eval(), (torch.zeros(1, 3, size, size),)).export(
            str(plain)
        )
        if int8:
            from ai_edge_quantizer import quantizer, recipe

            q = quantizer.Quantizer(str(plain))
            q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            plain = Path(td) / "model_int8.tflite"
            q.quantize().export_model(str(plain))
        with atomic_path(path) as tmp:
            shutil.copyfile(plain, tmp)
    return path


def _litert_interpreter(path: Path, threads: int = 0):
    require("litert_runtime")
    from ai_edge_litert.interpreter import Interpreter

    if not Path(path).is_file():
        raise MobileExportError(f"{path}: no LiteRT model; run 'dvc repro export_mobile' for this concept")
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        interpreter.allocate_tensors()
    except Exception as e:  # ValueError for a flatbuffer that does not verify, RuntimeError from the kernels
        raise MobileExportError(
            f"{path}: not a loadable LiteRT model ({str(e).strip().splitlines()[0][:160]}); "
            "delete it and rerun 'dvc repro export_mobile'"
        ) from None
    return interpreter


def _litert_call(interpreter):
    (i,), (o,) = interpreter.get_input_details(), interpreter.get_output_details()

    def call(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(i["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(o["index"]).copy()

    return call, int(i["shape"][-1])


CONVERT = {"executorch": to_executorch, "litert": to_litert}  # the formats a runtime here checks: fp32 converters


# ----------------------------------------------------------------------------- Core ML


def to_coreml(model: "nn.Module", path: Path, size: int, int8_weights: bool = False) -> Path:
    """An ML Program `.mlpackage` (fp16 compute, float32 input and output; iOS 16 / macOS 13 and later);
    `int8_weights` also quantizes the weights to int8 (linear, per channel)."""
    require("coreml")
    import coremltools as ct
    import torch

    from pipeline.deploy.portable import rewritten

    example = (torch.zeros(1, 3, size, size),)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(rewritten(model, portable=True).eval(), example).run_decompositions({})
        ml = ct.convert(
            program,
            inputs=[ct.TensorType(name="image", shape=example[0].shape, dtype=np.float32)],
            outputs=[ct.TensorType(name="edited", dtype=np.float32)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16,
            minimum_deployment_target=ct.target.iOS16,
        )
        if int8_weights:
            config = ct.optimize.coreml.OptimizationConfig(
                global_config=ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
            )
            ml = ct.optimize.coreml.linear_quantize_weights(ml, config)
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as td:
        staged = Path(td) / path.name  # coremltools insists on the .mlpackage suffix
        ml.save(str(staged))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(staged, path)
    return path


def check_coreml(path: Path, size: int) -> dict:
    """What can be checked without Apple's runtime: the package's spec loads, it is an ML Program with one
    float32 input `image` and output `edited` of shape 1x3xSxS, and its operations (counted)."""
    require("coreml")
    import coremltools as ct

    if not (Path(path) / "Manifest.json").is_file():
        raise MobileExportError(f"{path}: no Core ML package; run 'dvc repro export_mobile' for this concept")
    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as e:
        raise MobileExportError(
            f"{path}: not a readable Core ML package ({str(e).strip().splitlines()[0][:160]}); "
            "delete it and rerun 'dvc repro export_mobile'"
        ) from None
    want = [1, 3, size, size]
    io = {}
    for kind, items in (("input", spec.description.input), ("output", spec.description.output)):
        io[kind] = [{"name": f.name, "shape": list(f.type.multiArrayType.shape)} for f in items]
    problems = []
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"type {spec.WhichOneof('Type')}, not mlProgram")
    for kind, name in (("input", "image"), ("output", "edited")):
        if io[kind] != [{"name": name, "shape": want}]:
            problems.append(f"{kind}s {io[kind]}, expected one '{name}' of shape {want}")
    ops: dict[str, int] = {}
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                ops[op.type] = ops.get(op.type, 0) + 1
    if not ops.get("conv"):
        problems.append("no convolutions in the program")
    if problems:
        raise MobileExportError(f"{path}: {'; '.join(problems)}; the conversion is wrong, nothing was written")
    return {
        "checked": "structure (no Core ML runtime on Linux)",
        "spec_version": spec.specificationVersion,
        **io,
        "operations": ops,
    }


# ----------------------------------------------------------------------------- shared


def file_bytes(path: Path) -> int:
    """A file's size, or a package folder's total."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def latency(run, x: np.ndarray, runs: int, warmup: int = 2) -> dict[str, float]:
    """Median and p90 milliseconds of `run(x)` for one 1x3xSxS input."""
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(x)
        times.append(1000 * (time.perf_counter() - t0))
    return {
        "median_ms": round(statistics.median(times), 2),
        "p90_ms": round(float(np.percentile(times, 90)), 2),
        "runs": runs,
    }


RUNTIMES = ("onnx", "executorch", "litert")  # the formats that run on this machine


class Runner:
    """A loaded model as a callable (1, 3, S, S) float32 in [-1, 1] -> (1, 3, S, S), with its input side `size`."""

    def __init__(self, fn, size: int):
        self.fn, self.size = fn, size

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.fn(np.ascontiguousarray(x, dtype=np.float32))


def runner(fmt: str, path: Path, threads: int = 0) -> Runner:
    """A Runner for a format that runs on this machine (RUNTIMES); `threads` 0: the runtime's default."""
    if fmt == "executorch":
        import torch

        method = _executorch_method(path, threads)
        size = int(method.metadata.input_tensor_meta(0).sizes()[-1])
        return Runner(lambda x: method.execute([torch.from_numpy(x)])[0].numpy(), size)
    if fmt == "litert":
        return Runner(*_litert_call(_litert_interpreter(path, threads)))
    if fmt == "onnx":
        from pipeline.deploy.export import ort_session

        sess = ort_session(path, threads)
        return Runner(lambda x: sess.run(None, {"image": x})[0], int(sess.get_inputs()[0].shape[-1]))
    raise MobileExportError(f"runtime {fmt!r} does not run on this machine; use one of {', '.join(RUNTIMES)}")
