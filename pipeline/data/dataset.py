"""A concept's pairs in memory: the one place that reads a pairs folder and its prompts for training,
evaluation and export (`read_pairs`, `PairData`, `ConceptData`, the held-out pairs and the text condition)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import E2GANError
from pipeline.core.images import load_rgb
from pipeline.core.tensors import to_signed

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


def heldout_pairs(folder, limit: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The held-out (inputs, teacher edits) of a pairs folder (the first `limit` when set)."""
    rows = read_pairs(folder, "heldout")
    rows = rows[:limit] if limit else rows
    pairs = [load_pair(r) for r in rows]
    return [a for a, _ in pairs], [b for _, b in pairs]


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
    from pipeline.data.text import text_encoder

    e = text_encoder(encoder).encode([concept_prompt(folder)])
    return e.tokens, e.mask


# ----------------------------------------------------------------------------- training pairs in memory


class DataError(E2GANError):
    """Training pairs that cannot be used (none left, mismatched shapes)."""


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


def load_pair_data(
    folders: dict[str, Path],
    encoder: str,
    split: str = "train",
    limit: int = 0,
    prompts_files: dict[str, Path] | None = None,
) -> PairData:
    """Pairs of several concepts, each conditioned on its own instructions (its prompts.json: in the pairs
    folder, or given in `prompts_files`)."""
    from pipeline.data.text import text_encoder

    enc = text_encoder(encoder)
    inputs, targets, rows, names, prompts = [], [], [], [], []
    for name, folder in folders.items():
        pfile = prompts_file((prompts_files or {}).get(name, folder))
        if not pfile.is_file():
            raise E2GANError(f"{pfile}: no prompts for concept {name!r}; run 'dvc repro expand_prompts@{name}'")
        instr = json.loads(pfile.read_text())["instructions"]
        first = len(prompts)
        prompts += instr
        pairs = read_pairs(folder, split)
        if limit:
            pairs = pairs[:limit]
        for r in pairs:
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
    e = enc.encode(prompts)
    to_t = lambda arr: torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return PairData(to_t(inputs), to_t(targets), rows, e.tokens, e.mask, names)


@dataclass
class ConceptData:
    """A concept's training pairs in memory plus where its held-out pairs and prompts are."""

    name: str
    folder: Path  # pairs folder (train + heldout)
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
