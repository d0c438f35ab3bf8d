"""Adapter artifacts: a concept as LoRA factors + text tokens that patch one shared base ONNX model."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.adapt.lora import lora_delta, plain_lora, read_adapter
from pipeline.core.io import atomic_path
from pipeline.deploy.export import ExportError, check_onnx

PREFIX = "G."  # ImageOnly's name for the generator in exported initializer names
TONE = "tone.values"  # the output curve's values (nets/tone.py), by the generator's parameter name
TONE_WINDOW = "tone.window"  # in an artifact: the outline gate's box; in a base model's metadata: the same


def adapter_artifact(adapter_dir: Path, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """A concept as the few tensors an app needs on top of the base ONNX model: per LoRA layer its A and B
    factors and scale (alpha / r), every bias the adapter trained (`<layer>.bias`, the whole new vector), plus
    the concept's text tokens and mask, and its output curve (`tone.values`, with `tone.window` when it has an
    outline gate) if it has one. Stored as float32 (an fp16 adapter's values, exactly)."""
    from pipeline.model.nets.tone import FILE, read_tone

    cfg, layers, biases = read_adapter(adapter_dir, ExportError)
    if not plain_lora(cfg):
        raise ExportError(f"{adapter_dir}: not a plain LoRA adapter (e.g. DoRA); an artifact holds LoRA factors only")
    out: dict[str, torch.Tensor] = {"tokens": tokens.contiguous(), "mask": mask.contiguous()}
    for layer, (a, b, scale) in layers.items():
        out[f"{layer}.lora_A"], out[f"{layer}.lora_B"] = a.contiguous(), b.contiguous()
        out[f"{layer}.scale"] = torch.tensor([scale], dtype=torch.float32)
    out.update({k: v.contiguous() for k, v in biases.items()})  # a LoRA layer's own bias by the base layer's name
    if (Path(adapter_dir) / FILE).is_file():
        values, window = read_tone(Path(adapter_dir) / FILE, 3, ExportError)  # the base model's RGB output
        out[TONE] = values.contiguous()
        if window:
            out[TONE_WINDOW] = torch.tensor([window], dtype=torch.float32)
    return out


def mark_tone_window(onnx_path: Path, window: int) -> Path:
    """Name the base model's outline-gate box in its metadata, where apply_artifact checks a concept's."""
    import onnx

    model = onnx.load(str(onnx_path))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, TONE_WINDOW: str(window)})
    onnx.save(model, str(onnx_path))
    return onnx_path


def tone_window_of(model) -> int:
    """The outline gate's box a base ONNX model was exported with (0: none)."""
    return int({p.key: p.value for p in model.metadata_props}.get(TONE_WINDOW, "0"))


def pad_tokens(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Text tokens padded (masked out) to a fixed length: one base ONNX graph fits every concept's prompt."""
    t = tokens.shape[1]
    if t > length:
        raise ExportError(f"the prompt has {t} text tokens, more than export_onnx.max_tokens={length}; raise it")
    pt = torch.zeros(tokens.shape[0], length, tokens.shape[2], dtype=tokens.dtype)
    pm = torch.zeros(mask.shape[0], length, dtype=mask.dtype)
    pt[:, :t], pm[:, :t] = tokens, mask
    return pt, pm


def apply_artifact(base_onnx: Path, artifact: Path, out: Path) -> Path:
    """Patch the base ONNX model's initializers with a concept's LoRA deltas, trained biases and text tokens
    -> `out`."""
    import onnx
    from onnx import numpy_helper
    from safetensors.torch import load_file

    check_onnx(base_onnx)
    try:
        t = load_file(str(artifact))
    except Exception as e:
        raise ExportError(
            f"{artifact}: not a readable adapter artifact ({str(e).splitlines()[0][:200]}); "
            "rerun 'dvc repro export_onnx' for this concept"
        ) from None
    model = onnx.load(str(base_onnx))
    inits = {i.name: i for i in model.graph.initializer}
    missing = [n for n in ("tokens", "mask") if n not in inits]
    if missing:
        raise ExportError(f"{base_onnx}: no {missing} initializers; the base model must be exported with fold=False")
    layers = sorted({k.rsplit(".", 1)[0] for k in t if k.endswith(".lora_A")})
    for layer in layers:
        name = f"{PREFIX}{layer}.weight"
        if name not in inits:
            raise ExportError(f"{artifact}: layer {layer!r} is not in {base_onnx}; the artifact is for another base")
        w = numpy_helper.to_array(inits[name]).copy()
        d = lora_delta(t[f"{layer}.lora_A"], t[f"{layer}.lora_B"], float(t[f"{layer}.scale"]), w.shape)
        inits[name].CopyFrom(numpy_helper.from_array((torch.from_numpy(w).double() + d).float().numpy(), name))
    for key in sorted(k for k in t if k.endswith(".bias")):
        name = f"{PREFIX}{key}"
        if name not in inits or tuple(inits[name].dims) != tuple(t[key].shape):
            raise ExportError(f"{artifact}: bias {key!r} does not fit {base_onnx}; the artifact is for another base")
        inits[name].CopyFrom(numpy_helper.from_array(t[key].float().numpy(), name))
    if TONE in t:
        name = f"{PREFIX}{TONE}"
        if name not in inits:
            raise ExportError(
                f"{artifact}: the concept has an output curve ({t[TONE].shape[1] - 1} segments) and {base_onnx} has "
                "none; set finetune_lora.tone_knots to it and rerun 'dvc repro export_base_onnx'"
            )
        if tuple(inits[name].dims) != tuple(t[TONE].shape):
            raise ExportError(
                f"{artifact}: its output curve has shape {tuple(t[TONE].shape)}, {base_onnx}'s "
                f"{tuple(inits[name].dims)}; export the base with the concept's finetune_lora.tone_knots and "
                "tone_window"
            )
        window, base_window = int(t[TONE_WINDOW]) if TONE_WINDOW in t else 0, tone_window_of(model)
        if window != base_window:
            raise ExportError(
                f"{artifact}: its outline gate's window is {window}, {base_onnx}'s {base_window}; set "
                f"finetune_lora.tone_window to {window} and rerun 'dvc repro export_base_onnx'"
            )
        inits[name].CopyFrom(numpy_helper.from_array(t[TONE].float().numpy(), name))
    length = inits["tokens"].dims[1]
    tokens, mask = pad_tokens(t["tokens"], t["mask"].to(t["tokens"].dtype), length)
    for n, v in (("tokens", tokens), ("mask", mask.to(torch.float32))):
        inits[n].CopyFrom(numpy_helper.from_array(v.numpy(), n))
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return out
