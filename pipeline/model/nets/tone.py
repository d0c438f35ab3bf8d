"""A per-concept output curve: each colour channel of the generator's output through its own piecewise-linear
function of [-1, 1], `knots` + 1 evenly spaced points learned directly (a learned 1-D lookup table); optionally an
outline gate, one more such function, of the input's local contrast, that scales the output's brightness.

A convolutional network reaches a hard threshold (colours quantised to a few levels, posterised tones) only with
large weights that short fine-tunes do not grow; a curve holds a staircase in a few numbers. It starts as the
identity, trains with the adapter (`finetune_lora.tone_knots`), is stored beside it (`tone_curve.safetensors`,
(3, knots + 1) float32) and runs in the merged and exported model as a two-point lookup and a linear blend (ONNX
Floor, Gather and elementwise operations).

The gate (`finetune_lora.tone_window`): an edit that draws dark outlines where the photo is darker than its
neighbourhood (cartoons, ink) is a threshold on the input's local contrast, which the network reaches only with
large weights too. Its input is the input's luminance minus its mean over a `window` x `window` box, times `GAIN`
and clipped to [-1, 1] (so the curve's points resolve contrasts of 1/GAIN of the range around zero); its value
multiplies the curved output's brightness in [0, 1]: 1 everywhere at the start (no change), 0 where the concept
draws black. Exported as an edge Pad, an AveragePool and the same lookup.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FILE = "tone_curve.safetensors"  # in the adapter folder, beside peft's files
KEY = "values"
WINDOW = "window"  # the file's metadata: the gate's box size ("0": no gate)
GAIN = 8.0  # the gate's input: local contrast times this, clipped to [-1, 1]
LUMA = (0.299, 0.587, 0.114)  # RGB -> luminance (ITU-R BT.601)


class ToneCurve(nn.Module):
    """(B, C, H, W) in [-1, 1] -> the same shape: channel c's value x becomes the linear interpolation of
    `values[c]` at x on the evenly spaced grid of [-1, 1]. `values` = the grid: the identity. With `window` (odd,
    >= 3) a last row of `values` is the outline gate (module docstring), all ones at the start; it reads the
    generator's input, `forward`'s `image`."""

    def __init__(self, knots: int = 32, channels: int = 3, window: int = 0):
        super().__init__()
        if knots < 1:
            raise ValueError(f"a tone curve needs at least 1 segment, got knots={knots}")
        if window and (window < 3 or window % 2 == 0):
            raise ValueError(f"the outline gate's window must be odd and at least 3 (or 0: none), got {window}")
        self.window, self.channels = window, channels
        grid = torch.linspace(-1.0, 1.0, knots + 1)
        self.register_buffer("grid", grid, persistent=False)
        # where each row's points start in the flattened values (the gate's row last)
        self.register_buffer(
            "offsets", torch.arange(channels).view(1, channels, 1, 1) * (knots + 1.0), persistent=False
        )
        rows = [grid.repeat(channels, 1)] + ([torch.ones(1, knots + 1)] if window else [])
        self.values = nn.Parameter(torch.cat(rows))
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), persistent=False)

    @property
    def knots(self) -> int:
        return self.values.shape[1] - 1

    def lookup(self, x: torch.Tensor, offsets: torch.Tensor | float) -> torch.Tensor:
        # x's segment i and its place f in it; the values at both ends by index (one Gather each in ONNX)
        k = self.knots
        u = (x.clamp(-1.0, 1.0) + 1.0) * (k / 2.0)
        i = u.floor().clamp(max=k - 1)
        f = u - i
        at = (i + offsets).long()
        flat = self.values.reshape(-1)
        lo, hi = flat[at], flat[at + 1]
        return lo + (hi - lo) * f

    def contrast(self, image: torch.Tensor) -> torch.Tensor:
        """The gate's input: (B, 1, H, W), the image's luminance minus its box mean, times GAIN, in [-1, 1]."""
        y = (image[:, :3] * self.luma).sum(1, keepdim=True)
        r = self.window // 2
        mean = F.avg_pool2d(F.pad(y, (r, r, r, r), mode="replicate"), self.window, stride=1)
        return ((y - mean) * GAIN).clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        out = self.lookup(x, self.offsets).clamp(-1.0, 1.0)
        if not self.window:
            return out
        if image is None:
            raise ValueError("this tone curve has an outline gate: pass the generator's input as `image`")
        gate = self.lookup(self.contrast(image), self.channels * (self.knots + 1.0))
        return ((out + 1.0) * gate - 1.0).clamp(-1.0, 1.0)


def with_tone(G: nn.Module, knots: int, window: int = 0) -> nn.Module:
    """G (changed in place and returned) with an identity curve of `knots` segments on its output, and with
    `window` an outline gate that changes nothing yet."""
    G.tone = ToneCurve(knots, G.cfg.out_channels, window)
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
    meta = {"format": "pt", WINDOW: str(tone.window)}
    save_file({KEY: tone.values.detach().float().contiguous()}, str(path), meta)
    return path.stat().st_size


def read_tone(path: Path, channels: int, error: type[Exception]) -> tuple[torch.Tensor, int]:
    """A curve file's values (float32) and its gate's window (0: none), checked against a generator with
    `channels` output channels; `error` names the fix when the file is unreadable or does not fit."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            window = int((f.metadata() or {}).get(WINDOW, "0"))
            values = f.get_tensor(KEY).float()
    except Exception as e:  # safetensors raises its own errors for corrupt files; KeyError for another file
        raise error(
            f"{path}: not a readable tone curve ({str(e).splitlines()[0][:200]}); "
            "delete the adapter folder and rerun 'dvc repro finetune_lora'"
        ) from None
    if window and (window < 3 or window % 2 == 0):
        raise error(f"{path}: an outline gate's window must be odd and at least 3, the file says {window}")
    rows = channels + (1 if window else 0)
    if values.ndim != 2 or values.shape[0] != rows or values.shape[1] < 2:
        raise error(f"{path}: a tone curve of shape {tuple(values.shape)} does not fit this generator's output")
    return values, window


def load_tone(G: nn.Module, folder: Path, error: type[Exception]) -> nn.Module:
    """G (changed in place and returned) with the adapter folder's curve on its output, if the folder has one.
    `error` names the fix when the file is unreadable or not a curve."""
    path = Path(folder) / FILE
    if not path.is_file():
        return G
    values, window = read_tone(path, G.cfg.out_channels, error)
    tone = ToneCurve(values.shape[1] - 1, G.cfg.out_channels, window)
    with torch.no_grad():
        tone.values.copy_(values)
    G.tone = tone
    return G
