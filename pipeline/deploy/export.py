"""ONNX export of generators (the text condition folded in as a constant), fp16/int8 variants, onnxruntime
sessions and latency, and a concept's merged model."""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core.errors import E2GANError
from pipeline.core.io import atomic_path
from pipeline.core.tensors import array_to_image, image_to_array
from pipeline.model.nets.generator import TextNorm, freeze_text_norms


class ImageOnly(nn.Module):
    """G(x | fixed text): the concept's text tokens are a buffer, so the exported graph takes an image only."""

    def __init__(self, G: nn.Module, tokens: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        super().__init__()
        self.G = G
        self.register_buffer("tokens", tokens if tokens is not None else torch.zeros(1, 1, 1))
        self.register_buffer("mask", mask if mask is not None else torch.ones(1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.G(image, self.tokens.expand(image.shape[0], -1, -1), self.mask.expand(image.shape[0], -1))


class ExportError(E2GANError):
    """An ONNX model or adapter artifact is missing, corrupt or does not fit its base."""


def export_onnx(
    model: nn.Module, path: Path, size: int, opset: int = 17, dynamic_batch: bool = False, fold: bool = True
) -> Path:
    """Export an image-only model with input `image` (N, 3, size, size) in [-1, 1] and output `edited`.

    Without `fold`, every weight stays an initializer named after its parameter (`G.ds.conv.weight`,
    `tokens`), which is what adapter artifacts patch; onnxruntime folds constants when it loads the model.
    With `fold`, the text is a constant: text-conditioned norms become plain affine InstanceNorms.
    Attention is written out as matmuls (portable.rewritten) so that OpenCV's DNN module loads the model too.
    """
    from pipeline.deploy.portable import rewritten

    model = model.eval()
    if fold and isinstance(model, ImageOnly) and any(isinstance(m, TextNorm) for m in model.G.modules()):
        model = ImageOnly(freeze_text_norms(model.G, model.tokens, model.mask), model.tokens, model.mask).eval()
    model = rewritten(model)
    dummy = torch.zeros(1, 3, size, size)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            input_names=["image"],
            output_names=["edited"],
            opset_version=opset,
            dynamo=False,
            do_constant_folding=fold,
            dynamic_axes={"image": {0: "batch"}, "edited": {0: "batch"}} if dynamic_batch else None,
        )
        if not fold:  # Resize's scales stay a Concat of constants unfolded, which OpenCV refuses
            import onnx

            onnx.save(fold_constant_nodes(onnx.load(str(tmp))), str(tmp))
        check_onnx(tmp)
    return path


FOLDABLE = {
    *("Concat", "Unsqueeze", "Squeeze", "Cast", "Add", "Sub", "Mul", "Div", "Gather", "Slice", "Reshape"),
    *("Transpose", "ConstantOfShape", "Shape", "Expand", "Equal", "Where", "Range", "Identity", "Neg"),
}


def fold_constant_nodes(model, initializers: bool = False):
    """Replace nodes of FOLDABLE types whose inputs are all Constant nodes' outputs (recursively) by Constants:
    OpenCV refuses a Resize whose scales, and crashes on a Pad whose pads, are computed. Initializers (the
    weights an adapter artifact patches) count as constants only with `initializers`."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    values: dict = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer} if initializers else {}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = ReferenceEvaluator(
                helper.make_model(
                    helper.make_graph([node], "c", [], [helper.make_empty_tensor_value_info(node.output[0])])
                )
            ).run(None, {})[0]
        elif node.op_type in FOLDABLE and all(not i or i in values for i in node.input):
            graph = helper.make_graph([node], "f", [], [helper.make_empty_tensor_value_info(o) for o in node.output])
            graph.node[0].ClearField("input")
            graph.node[0].input.extend([f"in{k}" if i else "" for k, i in enumerate(node.input)])
            consts = [
                helper.make_node("Constant", [], [f"in{k}"], value=numpy_helper.from_array(values[i]))
                for k, i in enumerate(node.input)
                if i
            ]
            graph = helper.make_graph(consts + list(graph.node), "f", [], list(graph.output))
            sub = helper.make_model(graph, opset_imports=model.opset_import)
            for name, value in zip(node.output, ReferenceEvaluator(sub).run(None, {})):
                values[name] = value
            nodes.append(
                helper.make_node(
                    "Constant", [], list(node.output)[:1], value=numpy_helper.from_array(values[node.output[0]])
                )
            )
            continue
        nodes.append(node)
    used = {i for n in nodes for i in n.input} | {o.name for o in model.graph.output}
    kept = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx.checker.check_model(model)
    return model


def topological(model):
    """Nodes in dependency order (onnxruntime's float16 converter appends its input casts at the end, which
    onnxruntime tolerates and OpenCV does not)."""
    ready = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.input)]
        if not progress:
            raise ExportError("the ONNX graph has a cycle or an undefined input; it cannot be ordered")
        for n in progress:
            ordered.append(n)
            ready.update(n.output)
        done = {id(n) for n in progress}
        pending = [n for n in pending if id(n) not in done]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


def check_onnx(path: Path) -> None:
    """onnx.checker on a file, as an ExportError naming the file and the fix."""
    import onnx

    if not Path(path).is_file():
        raise ExportError(f"{path}: no ONNX model; run 'dvc repro export_onnx' for this concept")
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # onnx raises ValidationError, DecodeError, ... for broken files
        raise ExportError(
            f"{path}: not a valid ONNX model ({str(e).strip().splitlines()[0][:200]}); "
            "delete it and rerun 'dvc repro export_onnx'"
        ) from None


def run_onnx(path: Path, images: list[np.ndarray], threads: int = 0) -> list[np.ndarray]:
    """RGB uint8 images (all of the model's input size) -> uint8 outputs, one image per run."""
    sess = ort_session(path, threads)
    return [array_to_image(sess.run(None, {"image": image_to_array(im)})[0][0]) for im in images]


def onnx_outputs(path: Path, x: np.ndarray, threads: int = 0) -> np.ndarray:
    """The model's outputs for the batch `x` from one onnxruntime session: as one batch, or one image per run
    where the model's batch is fixed at 1."""
    sess = ort_session(path, threads)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if sess.get_inputs()[0].shape[0] == 1 and len(x) > 1:
        return np.concatenate([sess.run(None, {"image": x[i : i + 1]})[0] for i in range(len(x))])
    return sess.run(None, {"image": x})[0]


# ----------------------------------------------------------------------------- lower precision


def to_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and activations inside, fp32 input and output (onnxruntime's float16 converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    model = fold_constant_nodes(topological(model), initializers=True)  # Resize's scales: fp16 cast back to fp32
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return dst


def to_int8(src: Path, dst: Path, calibration: list[np.ndarray]) -> Path:
    """Static int8 (QDQ, per-channel weights) calibrated on real inputs (onnxruntime.quantization)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": image_to_array(im)} for im in calibration])

        def get_next(self):
            return next(self.items, None)

    # Conv and MatMul only (the cost), no graph fusion before: OpenCV's DNN module runs the result, and it
    # rejects quantized norms and the Gemm that onnxruntime's pre-processing fuses
    with atomic_path(dst.with_suffix(".pre.onnx")) as pre:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, skip_optimization=True)
        with atomic_path(dst) as tmp:
            quantize_static(
                str(pre),
                str(tmp),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["Conv", "MatMul"],
            )
    dst.with_suffix(".pre.onnx").unlink(missing_ok=True)
    return dst


def opencv_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """(N, 3, S, S) -> outputs of the model in OpenCV's DNN module (its default engine), one image per run."""
    import cv2

    try:
        net = cv2.dnn.readNetFromONNX(str(path))
        outs = []
        for i in range(len(x)):
            net.setInput(np.ascontiguousarray(x[i : i + 1], dtype=np.float32))
            outs.append(np.array(net.forward()))
    except cv2.error as e:
        raise ExportError(
            f"{path}: OpenCV's DNN module cannot run it ({str(e).strip().splitlines()[-1][:200]})"
        ) from None
    return np.concatenate(outs)


def ort_session(path: Path, threads: int = 0):
    """A CPU onnxruntime session (threads 0 = onnxruntime's default, all cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_latency(path: Path, size: int, threads: int, runs: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median and p90 milliseconds per 1x3xHxW image in onnxruntime on the CPU."""
    sess = ort_session(path, threads)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {"image": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"image": x})
        times.append(1000 * (time.perf_counter() - t0))
    return {
        "median_ms": round(statistics.median(times), 2),
        "p90_ms": round(float(np.percentile(times, 90)), 2),
        "runs": runs,
        "threads": threads,
    }


# ----------------------------------------------------------------------------- a concept's model


def concept_model(base_dir: Path, adapter_dir: Path | None, prompts: Path) -> tuple[ImageOnly, dict]:
    """The base generator with the concept's LoRA merged in (merge_and_unload) and its prompt folded in."""
    from pipeline.adapt.lora import load_adapter
    from pipeline.data.dataset import concept_condition
    from pipeline.model.checkpoint import load_generator

    G, meta = load_generator(base_dir)
    if adapter_dir is not None:
        if not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise ExportError(f"{adapter_dir}: no adapter for this concept; run 'dvc repro finetune_lora' first")
        G = load_adapter(G, adapter_dir, merge=True)
    tokens, mask = concept_condition(prompts, meta["text_encoder"])
    return ImageOnly(G.eval(), tokens, mask).eval(), meta
