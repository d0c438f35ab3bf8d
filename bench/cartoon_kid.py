"""What the cartoon concept's KID rewards: the teacher's own parts, and the shipped student with the teacher's
outlines, each scored against the teacher on every test crop.

The `filters` teacher's cartoon is three bilateral filters, colours quantised to 6 levels per channel, and black
outlines where a pixel is darker than its neighbourhood (an adaptive threshold). Each part is applied alone to
the test inputs and scored by KID against the teacher, beside the identity, the base without adapter and the
shipped student (`models/lora/cartoon`, merged); `student + outlines` is the student's output with the teacher's
outline pixels set to black, and `half outlines` the input with them at half their brightness. Every set is paired
with the base on the same crops (`paired_kid`: KID minus the base's, 95 % interval over photo half-samples, as
`evaluate` reports). `outline_luminance` says how dark the student draws the outlines: its mean luminance on the
teacher's outline pixels over the input's there (1: not drawn, 0: black as the teacher draws them), and the same on
the other pixels as the control.

    python -m bench.cartoon_kid          ->  bench/results/cartoon_kid.json and cartoon_kid.png  (about 3 minutes)

Needs `make run` first (the concept's pairs, prompts and adapter). Nothing here chooses anything: it reads test to
explain a reported figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from bench.common import RESULTS, code_version, machine
from pipeline.config import load_params
from pipeline.core.errors import E2GANError
from pipeline.core.images import save_png
from pipeline.core.io import atomic_write_json
from pipeline.core.metrics import inception_features, kid_from_features
from pipeline.core.plots import grid
from pipeline.data.teachers import filters
from pipeline.evaluate.sets import paired_kid

CONCEPT = "cartoon"


def parts(img: np.ndarray) -> dict[str, np.ndarray]:
    """The cartoon filter's steps on one RGB uint8 crop (its own code's constants), and its outline mask."""
    smooth = img
    for _ in range(3):
        smooth = cv2.bilateralFilter(smooth, 9, 75, 75)
    edges = cv2.adaptiveThreshold(
        cv2.medianBlur(filters._gray(img), 5),
        255,
        cv2.ADAPTIVE_THRESH_MEAN_C,
        cv2.THRESH_BINARY,
        filters._odd(filters._scale(img, 9)),
        5,
    )
    colours = filters._quantize(smooth, 6)
    return {"smooth": smooth, "colours": colours, "edges": edges, "full": colours & filters._rgb(edges)}


def luminance(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def outline_luminance(student: list, inputs: list, masks: list) -> dict:
    """The student's mean luminance over the input's, on the teacher's outline pixels and on the others."""
    on = [(luminance(s)[m].sum(), luminance(x)[m].sum()) for s, x, m in zip(student, inputs, masks)]
    off = [(luminance(s)[~m].sum(), luminance(x)[~m].sum()) for s, x, m in zip(student, inputs, masks)]
    ratio = lambda v: float(sum(a for a, _ in v) / max(sum(b for _, b in v), 1e-9))  # noqa: E731
    return {"outline_pixels": ratio(on), "other_pixels": ratio(off), "outline_share": float(np.mean(masks))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS / "cartoon_kid.json")
    args = ap.parse_args()
    from pipeline.adapt.lora import load_adapter
    from pipeline.data.dataset import concept_condition, split_pairs
    from pipeline.model.checkpoint import load_generator
    from pipeline.model.infer import run_generator

    params = load_params()
    if CONCEPT not in params.concepts:
        raise SystemExit(f"'{CONCEPT}' is not a concept in params.yaml: add it and run `make run` first")
    pairs, prompts = Path(f"data/pairs/{CONCEPT}"), Path(f"data/prompts/{CONCEPT}/prompts.json")
    adapter = Path(f"models/lora/{CONCEPT}")
    if not (adapter / "adapter_config.json").is_file():
        raise SystemExit(f"{adapter}: no adapter; run `dvc repro finetune_lora@{CONCEPT}` (or `make run`) first")
    try:
        test = split_pairs(pairs, "test")
    except E2GANError as e:
        raise SystemExit(str(e)) from None
    inputs, teacher, photos = test.inputs, test.teacher, list(test.photos)
    split = [parts(x) for x in inputs]
    same = float(np.mean([np.array_equal(p["full"], t) for p, t in zip(split, teacher)]))
    masks = [p["edges"] == 0 for p in split]

    base, meta = load_generator(Path("models/base"))
    tokens, mask = concept_condition(prompts, meta["text_encoder"])
    base_out = run_generator(base, inputs, tokens, mask)
    student = load_adapter(load_generator(Path("models/base"))[0], adapter, merge=True)
    student_out = run_generator(student, inputs, tokens, mask)

    def blacken(imgs, ms, level: float) -> list:
        return [np.where(m[..., None], (x * level).astype(np.uint8), x) for x, m in zip(imgs, ms)]

    sets = {
        "identity": inputs,
        "base without adapter": base_out,
        "student (shipped adapter)": student_out,
        "smooth (3 bilateral filters)": [p["smooth"] for p in split],
        "colours (smooth, quantised; no outlines)": [p["colours"] for p in split],
        "outlines on the input": blacken(inputs, masks, 0.0),
        "half outlines on the input": blacken(inputs, masks, 0.5),
        "student + outlines": blacken(student_out, masks, 0.0),
    }
    tf = inception_features(teacher)
    feats = {name: inception_features(imgs) for name, imgs in sets.items()}
    base_f = feats["base without adapter"]
    rows = {
        name: {
            "kid": kid_from_features(f, tf),
            **(
                {}
                if name == "base without adapter"
                else {"minus_base": paired_kid(f, base_f, tf, photos, params.evaluate.kid_bootstrap, 0)}
            ),
        }
        for name, f in feats.items()
    }
    result = {
        "concept": CONCEPT,
        "split": "test",
        "test_crops": len(inputs),
        "test_photos": len(set(photos)),
        "teacher_reproduced": same,  # share of test crops whose teacher image the parts' code reproduces exactly
        "sets": rows,
        "outline_luminance": outline_luminance(student_out, inputs, masks),
        "commit": code_version(),
        "machine": machine(),
    }
    atomic_write_json(args.out, result)
    pick = list(range(0, len(inputs), max(1, len(inputs) // 5)))[:5]
    shown = ["identity", "base without adapter", "student (shipped adapter)", "colours (smooth, quantised; no outlines)",
             "outlines on the input", "student + outlines"]  # fmt: skip
    picture = grid([[teacher[i] for i in pick], *[[sets[n][i] for i in pick] for n in shown]], ["teacher", *shown])
    save_png(picture, args.out.with_suffix(".png"))
    for name, r in rows.items():
        d = r.get("minus_base")
        extra = f"  minus base {d['mean']:+.4f} [{d['ci95']['low']:+.4f}, {d['ci95']['high']:+.4f}]" if d else ""
        print(f"{name:42s} KID {r['kid']:.4f}{extra}")
    print(result["outline_luminance"], f"teacher reproduced on {same:.0%} of crops")


if __name__ == "__main__":
    main()
