"""A per-concept output curve: each colour channel of the generator's output through its own piecewise-linear
function of [-1, 1], `knots` + 1 evenly spaced points learned directly (a learned 1-D lookup table).

A convolutional network reaches a hard threshold (colours quantised to a few levels, posterised tones) only with
large weights that short fine-tunes do not grow; a curve holds a staircase in a few numbers. It starts as the
identity, trains with the adapter (`finetune_lora.tone_knots`), is stored beside it (`tone_curve.safetensors`,
(3, knots + 1) float32) and runs in the merged and exported model as a two-point lookup and a linear blend (ONNX
Floor, Gather and elementwise operations).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FILE = "tone_curve.safetensors"  # in the adapter folder, beside peft's files
KEY = "values"


class ToneCurve(nn.Module):
    """(B, C, H, W) in [-1, 1] -> the same shape: channel c's value x becomes the linear interpolation of
    `values[c]` at x on the evenly spaced grid of [-1, 1]. `values` = the grid: the identity."""

    def __init__(self, knots: int = 32, channels: int = 3):
        super().__init__()
        if knots < 1:
            raise ValueError(f"a tone curve needs at least 1 segment, got knots={knots}")
        grid = torch.linspace(-1.0, 1.0, knots + 1)
        self.register_buffer("grid", grid, persistent=False)
        # where each channel's points start in the flattened values
        self.register_buffer(
            "offsets", torch.arange(channels).view(1, channels, 1, 1) * (knots + 1.0), persistent=False
        )
        self.values = nn.Parameter(grid.repeat(channels, 1))

    @property
    def knots(self) -> int:
        return self.values.shape[1] - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x's segment i and its place f in it; the values at both ends by index (one Gather each in ONNX)
        k = self.knots
        u = (x.clamp(-1.0, 1.0) + 1.0) * (k / 2.0)
        i = u.floor().clamp(max=k - 1)
        f = u - i
        at = (i + self.offsets).long()
        flat = self.values.reshape(-1)
        lo, hi = flat[at], flat[at + 1]
        return (lo + (hi - lo) * f).clamp(-1.0, 1.0)


def with_tone(G: nn.Module, knots: int) -> nn.Module:
    """G (changed in place and returned) with an identity curve of `knots` segments on its output."""
    G.tone = ToneCurve(knots, G.cfg.out_channels)
    return G


def tone_parameters(G: nn.Module) -> list[nn.Parameter]:
    tone = getattr(G, "tone", None)
    return [] if tone is None else list(tone.parameters())


def save_tone(G: nn.Module, folder: Path) -> int:
    """Write G's curve into an adapter folder; returns its bytes (0 and nothing written without a curve)."""
    from safetensors.torch import save_file

    tone = getattr(G, "tone", None)
    if tone is None:
        return 0
    path = Path(folder) / FILE
    save_file({KEY: tone.values.detach().float().contiguous()}, str(path), {"format": "pt"})
    return path.stat().st_size


def load_tone(G: nn.Module, folder: Path, error: type[Exception]) -> nn.Module:
    """G (changed in place and returned) with the adapter folder's curve on its output, if the folder has one.
    `error` names the fix when the file is unreadable or not a curve."""
    from safetensors.torch import load_file

    path = Path(folder) / FILE
    if not path.is_file():
        return G
    try:
        values = load_file(str(path))[KEY]
    except Exception as e:  # safetensors raises its own errors for corrupt files; KeyError for another file
        raise error(
            f"{path}: not a readable tone curve ({str(e).splitlines()[0][:200]}); "
            "delete the adapter folder and rerun 'dvc repro finetune_lora'"
        ) from None
    if values.ndim != 2 or values.shape[0] != G.cfg.out_channels or values.shape[1] < 2:
        raise error(f"{path}: a tone curve of shape {tuple(values.shape)} does not fit this generator's output")
    tone = ToneCurve(values.shape[1] - 1, values.shape[0])
    with torch.no_grad():
        tone.values.copy_(values.float())
    G.tone = tone
    return G
