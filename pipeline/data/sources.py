"""Source photos -> train / val / test crops at `data.image_size`, split by photo, with a manifest."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from pipeline.core import assets
from pipeline.core.frozen import FrozenConfig
from pipeline.core.images import (
    SPLITS,
    ImageLoadError,
    load_rgb,
    probe,
    random_crops,
    save_png,
    scan_images,
    split_photos,
    stable_seed,
)
from pipeline.core.io import atomic_dir, atomic_write_json, sha256_file
from pipeline.core.progress import progress

log = logging.getLogger(__name__)


class DataConfig(FrozenConfig):
    """Where source photos come from and how they become training crops."""

    sources: str = "offline"  # "offline" = the asset cache (e2gan assets fetch), or a folder of photos
    include_grey: bool = False  # greyscale photos are converted to RGB; off by default for colour edits
    min_size: int = Field(256, ge=16)  # photos whose short side is smaller are skipped (and counted)
    image_size: int = Field(128, ge=16, le=2048)  # crop size; 256 in the paper-scale profile
    crops_per_photo: int = Field(4, ge=1, le=256)  # training crops per photo
    eval_crops_per_photo: int = Field(8, ge=1, le=256)  # val and test crops per photo: FID on a dozen is noise
    max_photos: int = Field(0, ge=0)  # 0 = all
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)  # photos for every choice (layers, ranks, best steps)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # photos for every reported figure
    seed: int = 0

    @field_validator("image_size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"must be a multiple of 16 (the generator downsamples 16x); try {round(v / 16) * 16}")
        return v

    @model_validator(mode="after")
    def _train_left(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"data.val_fraction + data.test_fraction = {self.val_fraction + self.test_fraction:g} leaves no "
                "train photos; keep their sum below 1 (e.g. 0.15 and 0.2)"
            )
        return self


@dataclass(frozen=True)
class Photo:
    name: str
    path: Path
    license: str = "user-provided"
    source: str = "user folder"


def find_photos(cfg: DataConfig) -> list[Photo]:
    """The configured photos: the offline asset cache, or every image under a user folder."""
    return scan_photos(cfg)[0]


def scan_photos(cfg: DataConfig) -> tuple[list[Photo], list[dict], list[str]]:
    """(photos, skipped, ignored): the configured photos; for a user folder also the files that are skipped
    before reading (symlinks, hidden files, pipes: see scan_images) and those without a photo suffix."""
    if cfg.sources == "offline":
        entries = assets.cached_photos(include_grey=cfg.include_grey)
        if not entries:
            raise assets.AssetError("no photos in the asset cache; run 'e2gan assets fetch' (or 'make run') first")
        photos = [
            Photo(e["name"], Path(e["path"]), e["license"], f"{e['registry']} {e['package']} {e['version']}")
            for e in entries
        ]
        skipped, ignored = [], []
    else:
        root = Path(cfg.sources)
        scan = scan_images(root)
        skipped = [{"photo": _photo_name(p, root), "reason": reason} for p, reason in scan.skipped]
        ignored = [str(p.relative_to(root)) for p in scan.ignored]
        if not scan.files:
            why = (f"; {len(skipped)} skipped: " + "; ".join(e["reason"] for e in skipped[:3])) if skipped else ""
            raise ImageLoadError(f"data.sources: no images (png/jpg/bmp/webp/tif) under {cfg.sources}{why}")
        photos = [Photo(_photo_name(p, root), p) for p in scan.files]
    photos.sort(key=lambda p: p.name)
    return (photos[: cfg.max_photos] if cfg.max_photos else photos), skipped, ignored


def _photo_name(path: Path, root: Path) -> str:
    """The stem plus a hash of the path in the folder: tells same-named files in sub-folders apart, and does
    not change when the folder moves."""
    return f"{path.stem}-{stable_seed(path.relative_to(root)) % 10**6:06d}"


def _usable(cfg: DataConfig) -> tuple[list[Photo], list[dict], list[str]]:
    """The photos that pass the probe, and every skip so far (named, with the reason)."""
    found, skipped, ignored = scan_photos(cfg)
    for e in skipped:
        log.warning("skipped %s", e["reason"])
    if ignored:
        log.info("ignored %d file(s) without a photo suffix: %s", len(ignored), ", ".join(ignored[:5]))
    photos = []
    for photo in found:  # split only usable photos, so a bad file never empties a split
        try:
            probe(photo.path, cfg.min_size)
            photos.append(photo)
        except ImageLoadError as e:
            skipped.append({"photo": photo.name, "reason": str(e)})
            log.warning("skipped %s", e)
    return photos, skipped, ignored


def prepare_sources(cfg: DataConfig, out: Path) -> dict:
    """Write `out/{train,val,test}/<photo>_<k>.png` and `out/manifest.json`; return summary counts.

    Photos are split by photo (split_photos): train photos give `crops_per_photo` crops, val and test
    photos `eval_crops_per_photo`. Unreadable or too-small photos, symlinks, hidden files and pipes are
    skipped and counted (each named with the reason in the manifest), never fatal; files without a photo
    suffix are listed as `ignored`. The directory is swapped in atomically, so a killed run leaves the
    previous sources intact.
    """
    photos, skipped, ignored = _usable(cfg)
    splits = split_photos([p.name for p in photos], cfg.val_fraction, cfg.test_fraction, cfg.seed)
    split_of = {n: split for split, names in splits.items() for n in names}
    records = []
    with atomic_dir(out) as tmp:
        for photo in progress(photos, "cropping photos"):
            try:
                img = load_rgb(photo.path, min_size=cfg.min_size)
            except ImageLoadError as e:  # passed the probe but fails to decode fully
                skipped.append({"photo": photo.name, "reason": str(e)})
                log.warning("skipped %s", e)
                continue
            split = split_of[photo.name]
            n = cfg.crops_per_photo if split == "train" else cfg.eval_crops_per_photo
            for k, crop in enumerate(random_crops(img, cfg.image_size, n, stable_seed(cfg.seed, photo.name))):
                rel = f"{split}/{photo.name}_{k:02d}.png"
                save_png(crop, tmp / rel)
                records.append(
                    {
                        "file": rel,
                        "photo": photo.name,
                        "split": split,
                        "crop": k,
                        "source": photo.source,
                        "license": photo.license,
                    }
                )
        for r in records:
            r["sha256"] = sha256_file(tmp / r["file"])
        summary = _summary(records, len(skipped), cfg.image_size)
        empty = [s for s in SPLITS if not summary[f"crops_{s}"]]
        if empty:
            raise ImageLoadError(
                f"data: {summary['photos']} usable photos give no {' / '.join(empty)} crops; "
                "add photos or lower data.min_size"
            )
        manifest = {"summary": summary, "skipped": skipped, "crops": records}
        atomic_write_json(tmp / "manifest.json", {**manifest, "ignored": ignored} if ignored else manifest)
    return summary


def _summary(records: list[dict], skipped: int, image_size: int) -> dict:
    """Photos and crops per split."""
    out: dict = {"photos": len({r["photo"] for r in records})}
    for s in SPLITS:
        out[f"photos_{s}"] = len({r["photo"] for r in records if r["split"] == s})
    for s in SPLITS:
        out[f"crops_{s}"] = sum(r["split"] == s for r in records)
    return {**out, "skipped": skipped, "image_size": image_size}
