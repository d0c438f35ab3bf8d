"""Pictures for people: training curves (CSV for `dvc plots` + PNG) and image grids."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from pipeline.core.io import atomic_write_bytes, atomic_write_text


def write_history(history: list[dict], csv_path: Path, png_path: Path, title: str) -> None:
    """Loss history -> CSV (one row per logged step) and a PNG with one panel per loss."""
    if not history:
        return
    keys = list(history[0])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(csv_path, buf.getvalue())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [k for k in keys if k != "step"]
    fig, axes = plt.subplots(1, len(losses), figsize=(3.2 * len(losses), 2.8), dpi=100, squeeze=False)
    steps = [r["step"] for r in history]
    for ax, k in zip(axes[0], losses):
        ax.plot(steps, [r[k] for r in history], lw=1.2)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_fig(fig, png_path)


def save_fig(fig, out_png: Path) -> None:
    """A matplotlib figure as PNG, written atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())


def _wrap(draw, text: str, width: int, font) -> list[str]:
    """`text` in lines no wider than `width` px (words kept whole; a word longer than the width is cut)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            while draw.textlength(word, font=font) > width and len(word) > 1:  # a single long word: break it
                cut = max(1, next(i for i in range(len(word), 0, -1) if draw.textlength(word[:i], font=font) <= width))
                lines.append(word[:cut])
                word = word[cut:]
            lines.append(word)
    return lines


def grid(rows: list[list[np.ndarray]], labels: list[str] | None = None, label_width: int = 120) -> np.ndarray:
    """Stack equally sized RGB images: each inner list is one row; optional row labels on the left, wrapped to
    `label_width` px so nothing is cut off."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = rows[0][0].shape[:2]
    pad = label_width + 8 if labels else 0
    canvas = Image.new("RGB", (pad + w * max(len(r) for r in rows), h * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    for i, row in enumerate(rows):
        if labels:
            lines = _wrap(draw, labels[i], label_width, font)
            step = 16
            top = i * h + max(2, h // 2 - step * len(lines) // 2)
            for k, line in enumerate(lines):
                draw.text((4, top + k * step), line, fill="black", font=font)
        for j, img in enumerate(row):
            canvas.paste(Image.fromarray(img), (pad + j * w, i * h))
    return np.asarray(canvas)
