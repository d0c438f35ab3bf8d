"""A concept's pairs in memory: the one place that reads a pairs folder and its prompts for training,
evaluation and export (`read_pairs`, `PairData`, `ConceptData`, one split's pairs for scoring and the text
condition)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pipeline.core.errors import E2GANError
from pipeline.core.images import SPLITS, load_rgb, stable_seed
from pipeline.core.tensors import to_signed


class DataError(E2GANError):
    """Pairs that cannot be used (none left, mismatched shapes)."""


# ----------------------------------------------------------------------------- pairs folders


def read_pairs(folder: Path, split: str | None = None) -> list[dict]:
    """Rows of a pairs folder's metadata.jsonl (optionally one split), paths made absolute."""
    folder = Path(folder)
    path = folder / "metadata.jsonl"
    if not path.is_file():
        raise E2GANError(f"{path} is missing; run 'dvc repro generate_pairs' for this concept first")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r["input_path"], r["edited_path"] = str(folder / r["input_image"]), str(folder / r["edited_image"])
    return [r for r in rows if split is None or r["split"] == split]


def load_pair(r: dict) -> tuple[np.ndarray, np.ndarray]:
    """The (input, edited) images of one read_pairs row; clear errors for missing or mismatched files."""
    for key in ("input_path", "edited_path"):
        if not Path(r[key]).is_file():
            raise E2GANError(f"pairs: {r[key]} is listed in metadata.jsonl but missing; rerun generate_pairs")
    a, b = load_rgb(r["input_path"]), load_rgb(r["edited_path"])
    if a.shape != b.shape:
        raise E2GANError(
            f"pairs: {r['input_path']} is {a.shape[1]}x{a.shape[0]} but its edit is "
            f"{b.shape[1]}x{b.shape[0]}; rerun generate_pairs"
        )
    return a, b


def photo_of(row: dict) -> str:
    """The source photo of a pairs row (pairs folders made before rows carried it: from the crop's file name)."""
    return row.get("photo") or Path(row["input_image"]).stem.rsplit("_", 1)[0]


def spread_sample(rows: list[dict], limit: int, seed: int) -> list[dict]:
    """At most `limit` of `rows` spread over all their photos (0, or a limit >= len(rows): every row), in
    their original order; never the first `limit` rows.

    Photos are visited in a seeded order and, round after round, each gives its next crop (its crops also
    in a seeded order) until `limit` crops are taken: no photo gives a second crop before every photo has
    given one. The sample depends on the seed and the rows only, not on their order."""
    if not limit or limit >= len(rows):
        return list(rows)
    by_photo: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_photo.setdefault(photo_of(r), []).append(i)
    photos = sorted(by_photo, key=lambda ph: (stable_seed("sample", seed, ph), ph))
    queues = [
        sorted(by_photo[ph], key=lambda i: (stable_seed("sample", seed, rows[i]["input_image"]), i)) for ph in photos
    ]
    picked = [q[k] for k in range(max(map(len, queues))) for q in queues if k < len(q)]
    return [rows[i] for i in sorted(picked[:limit])]


class EvalPairs(NamedTuple):
    """One split's pairs for scoring: inputs, the teacher's edits and, per pair, its source photo."""

    inputs: list[np.ndarray]
    teacher: list[np.ndarray]
    photos: list[str]


def split_pairs(folder, split: str, limit: int = 0, seed: int = 0) -> EvalPairs:
    """The pairs of one split (`val` for every choice, `test` for every reported figure) of a pairs folder:
    all of them, or at most `limit` spread over all the split's photos (spread_sample with `seed`).

    `split` has no default, so no caller can score on test by accident."""
    if split not in SPLITS:
        raise E2GANError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    rows = read_pairs(folder, split)
    if not rows:
        raise DataError(
            f"{folder}: no {split} pairs in metadata.jsonl; check generate_pairs' metrics (every pair dropped?), "
            "or rerun prepare_sources and generate_pairs (pairs made before the train / val / test split)"
        )
    rows = spread_sample(rows, limit, seed)
    pairs = [load_pair(r) for r in rows]
    return EvalPairs([a for a, _ in pairs], [b for _, b in pairs], [photo_of(r) for r in rows])


# ----------------------------------------------------------------------------- prompts


def prompts_file(where) -> Path:
    """A concept's prompts.json: `where` itself if it is a file, else `where/prompts.json`."""
    p = Path(where)
    return p if p.is_file() else p / "prompts.json"


def concept_prompt(where) -> str:
    """The concept's prompt at inference: the first of its instructions."""
    return json.loads(prompts_file(where).read_text())["instructions"][0]


def concept_condition(folder, encoder: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The text condition of a concept at inference: its prompt (first instruction), tokens (1, T, D) + mask.

    `folder` holds a prompts.json (base pairs) or is the prompts.json itself (data/prompts/<concept>/)."""
    from pipeline.data.text import STORED, encode_items, stack_encodings

    pfile = prompts_file(folder)
    e = stack_encodings(encode_items([concept_prompt(pfile)], encoder, pfile.parent / STORED))
    return e.tokens, e.mask


# ----------------------------------------------------------------------------- training pairs in memory


@dataclass
class PairData:
    """Training pairs in memory: uint8 images and, per pair, the text rows it may be conditioned on."""

    inputs: torch.Tensor  # (N, 3, H, W) uint8
    targets: torch.Tensor  # (N, 3, H, W) uint8
    text_rows: list[list[int]]  # per pair: indices into tokens
    tokens: torch.Tensor  # (M, T, D) text token states
    mask: torch.Tensor  # (M, T)
    names: list[str] = field(default_factory=list)  # per pair: concept

    def __post_init__(self):
        if len(self.inputs) == 0:
            raise DataError("no training pairs: the pairs folder is empty or every pair was filtered out")
        if self.inputs.shape != self.targets.shape:
            raise DataError(f"inputs {tuple(self.inputs.shape)} and targets {tuple(self.targets.shape)} differ")

    def subset(self, idx: list[int]) -> PairData:
        """The pairs at `idx` (e.g. a clustered subset), sharing the text tokens."""
        t = torch.as_tensor(idx, dtype=torch.long)
        return PairData(
            self.inputs[t],
            self.targets[t],
            [self.text_rows[i] for i in idx],
            self.tokens,
            self.mask,
            [self.names[i] for i in idx] if self.names else [],
        )

    def batch(self, step: int, size: int, seed: int, flip: bool) -> tuple[torch.Tensor, ...]:
        """The batch for `step`: a pure function of (seed, step), so resuming needs no RNG state."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(len(self.inputs), (size,), generator=g)
        x, y = to_signed(self.inputs[idx]), to_signed(self.targets[idx])
        if flip:
            f = torch.rand(size, generator=g) < 0.5
            x[f], y[f] = x[f].flip(-1), y[f].flip(-1)
        rows = [self.text_rows[i][int(torch.randint(len(self.text_rows[i]), (1,), generator=g))] for i in idx.tolist()]
        return x, y, self.tokens[rows], self.mask[rows]


def patch_pairs(pairs, size: int):
    """`pairs` trained on random size x size windows (train_base.patch, finetune_lora.patch); the pairs as they
    are for size 0 or a size not smaller than the crops."""
    if size <= 0 or size >= min(pairs.inputs.shape[-2:]):
        return pairs
    return PatchPairs(**{f.name: getattr(pairs, f.name) for f in fields(PairData)}, size=size)


@dataclass
class PatchPairs(PairData):
    """PairData whose batches are one random window per pair (the same for input and target), a pure function of
    (seed, step) like PairData.batch."""

    size: int = 0

    def batch(self, step: int, size: int, seed: int, flip: bool) -> tuple[torch.Tensor, ...]:
        x, y, tokens, mask = super().batch(step, size, seed, flip)
        p, (h, w) = self.size, x.shape[-2:]
        g = torch.Generator().manual_seed(seed * 1_000_003 + step + 500_009)
        top = torch.randint(h - p + 1, (len(x),), generator=g).tolist()
        left = torch.randint(w - p + 1, (len(x),), generator=g).tolist()
        xy = torch.cat([x, y], dim=1)  # one cut for input and target
        xy = torch.stack([xy[i, :, t : t + p, s : s + p] for i, (t, s) in enumerate(zip(top, left))])
        return xy[:, : x.shape[1]], xy[:, x.shape[1] :], tokens, mask


def load_pair_data(
    folders: dict[str, Path],
    encoder: str,
    split: str = "train",
    prompts_files: dict[str, Path] | None = None,
) -> PairData:
    """Pairs of several concepts, each conditioned on its own instructions (its prompts.json: in the pairs
    folder, or given in `prompts_files`)."""
    from pipeline.data.text import STORED, encode_items, stack_encodings

    inputs, targets, rows, names, encoded = [], [], [], [], []
    for name, folder in folders.items():
        pfile = prompts_file((prompts_files or {}).get(name, folder))
        if not pfile.is_file():
            raise E2GANError(f"{pfile}: no prompts for concept {name!r}; run 'dvc repro expand_prompts@{name}'")
        instr = json.loads(pfile.read_text())["instructions"]
        first = len(encoded)  # this concept's rows in the stacked encodings
        encoded += encode_items(instr, encoder, pfile.parent / STORED)
        for r in read_pairs(folder, split):
            a, b = load_pair(r)
            inputs.append(a)
            targets.append(b)
            rows.append(list(range(first, first + len(instr))))
            names.append(name)
    if not inputs:
        raise E2GANError(
            f"no {split} pairs in {', '.join(map(str, folders.values()))}; check generate_pairs' "
            "metrics (every pair dropped?) or the pairs folders"
        )
    e = stack_encodings(encoded)
    to_t = lambda arr: torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return PairData(to_t(inputs), to_t(targets), rows, e.tokens, e.mask, names)


@dataclass
class ConceptData:
    """A concept's training pairs in memory plus where its val / test pairs and prompts are."""

    name: str
    folder: Path  # pairs folder (train, val and test rows)
    encoder: str
    pairs: PairData
    prompts: Path | None = None  # prompts.json when not inside `folder`

    @property
    def prompts_source(self) -> Path:
        """Where the concept's prompts.json is (its own file, or inside the pairs folder)."""
        return self.prompts if self.prompts is not None else self.folder


def load_concepts(
    folders: dict[str, Path], encoder: str, prompts: dict[str, Path] | None = None
) -> dict[str, ConceptData]:
    """ConceptData for each named pairs folder (prompts from `prompts`, else inside the folder)."""
    return {
        c: ConceptData(
            c, Path(f), encoder, load_pair_data({c: Path(f)}, encoder, prompts_files=prompts), (prompts or {}).get(c)
        )
        for c, f in folders.items()
    }
