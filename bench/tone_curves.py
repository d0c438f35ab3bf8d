"""What each shipped adapter's output curve and outline gate learnt: a picture of the curves and a results file.

For every concept of params.yaml with an adapter in `models/lora/<C>/`, the three colour curves (the output's value
in, the curved value out) and, where the adapter has one, the outline gate (the input's local contrast, in 8-bit
levels of luminance above or below its box mean, in; the factor on the output's brightness out: 0 draws black,
1 leaves it). The gate's points are read from the stored file; nothing is trained or scored here.

    python -m bench.tone_curves          ->  bench/results/tone_curves.json and tone_curves.png  (seconds)

Needs `make run` first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import RESULTS, code_version
from pipeline.config import load_params
from pipeline.core.errors import E2GANError
from pipeline.core.io import atomic_write_json
from pipeline.core.plots import save_fig
from pipeline.model.nets.tone import FILE, GAIN, read_tone


def gate_summary(gate: np.ndarray, levels: np.ndarray) -> dict:
    """Where the gate darkens: its lowest value and the contrast there, and the contrasts (8-bit levels) below
    which it is under one half."""
    low = int(np.argmin(gate))
    under = levels[gate < 0.5]
    return {
        "min": float(gate[low]),
        "min_at_levels": float(levels[low]),
        "under_half_up_to_levels": float(under.max()) if len(under) else None,
        "max": float(gate.max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS / "tone_curves.json")
    args = ap.parse_args()
    params = load_params()
    found = {}
    for concept in params.concepts:
        path = Path("models/lora") / concept / FILE
        if not path.is_file():
            continue
        try:
            values, window = read_tone(path, 3, E2GANError)
        except E2GANError as e:
            raise SystemExit(str(e)) from None
        found[concept] = (values.numpy(), window)
    if not found:
        raise SystemExit(
            "no adapter with an output curve in models/lora/: set finetune_lora.tone_knots and run `make run`"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gated = any(w for _, w in found.values())
    fig, axes = plt.subplots(
        1 + gated, len(found), figsize=(3.0 * len(found), 2.9 * (1 + gated)), dpi=100, squeeze=False
    )
    result: dict = {"concepts": {}, "commit": code_version(), "gain": GAIN}
    for col, (concept, (values, window)) in enumerate(found.items()):
        knots = values.shape[1] - 1
        grid = np.linspace(-1.0, 1.0, knots + 1)
        ax = axes[0][col]
        ax.plot(grid, grid, color="0.7", lw=0.8, ls="--")
        for ch, colour in enumerate(("tab:red", "tab:green", "tab:blue")):
            ax.plot(grid, values[ch], color=colour, lw=1.2)
        ax.set_title(f"{concept}: colour curves", fontsize=9)
        ax.set_xlabel("output value in", fontsize=8)
        ax.tick_params(labelsize=7)
        entry = {"knots": knots, "window": window, "curves": values[:3].round(4).tolist()}
        if window:
            levels = grid / GAIN * 127.5  # the gate's input in 8-bit levels of luminance above / below the mean
            gate = values[3]
            ax = axes[1][col]
            ax.axhline(1.0, color="0.7", lw=0.8, ls="--")
            ax.plot(levels, gate, color="black", lw=1.2)
            ax.set_title(f"{concept}: outline gate ({window}x{window} box)", fontsize=9)
            ax.set_xlabel("input's local contrast (8-bit levels)", fontsize=8)
            ax.set_ylabel("brightness factor", fontsize=8)
            ax.tick_params(labelsize=7)
            entry.update(
                gate=gate.round(4).tolist(), gate_levels=levels.round(3).tolist(), **gate_summary(gate, levels)
            )
        elif gated:
            axes[1][col].axis("off")
        result["concepts"][concept] = entry
    fig.tight_layout()
    save_fig(fig, args.out.with_suffix(".png"))
    atomic_write_json(args.out, result)
    for concept, e in result["concepts"].items():
        g = f"; gate min {e['min']:.2f} at {e['min_at_levels']:+.1f} levels" if e["window"] else ""
        print(f"{concept}: {e['knots']} segments{g}")


if __name__ == "__main__":
    try:
        main()
    except E2GANError as e:
        raise SystemExit(str(e)) from None
