"""The one GAN training loop (pix2pix objective: conditional GAN + λ·L1 [+ LPIPS]), reused by the base
model, LoRA fine-tuning and the baselines.

`gan_step` does one D and one G update and returns a loss dict; `fit` runs steps with checkpoints,
EMA, logging and a progress bar. All randomness comes from generators seeded by (seed, step), so a
resumed run on CPU reproduces the uninterrupted one bit for bit.

Under `torchrun` (see `init_distributed`) `fit` trains data-parallel with torch's
DistributedDataParallel: every rank draws the same global batch, keeps its slice `rank::world`, and DDP
averages the gradients, so N processes follow the one-process run up to float summation order (gloo
on CPU, NCCL on GPUs). Rank 0 logs and writes checkpoints.

Device: `E2GAN_DEVICE` (auto | cpu | cuda | cuda:N | mps; default auto = the process's CUDA device when
there is one, else CPU). It is not a parameter in params.yaml because it does not change what is
trained, only where: a GPU run is not bit-identical to a CPU run, but the stage outputs mean the same.
Models go to the device for `fit` and come back to the CPU afterwards; data stays on the CPU and each
batch is copied over.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from pipeline.core.errors import E2GANError
from pipeline.core.frozen import FrozenConfig
from pipeline.core.io import atomic_path
from pipeline.core.progress import bar
from pipeline.data.dataset import PairData
from pipeline.model.nets.discriminator import GAN_LOSSES, PatchDiscriminator, l1

log = logging.getLogger(__name__)


class TrainingError(E2GANError):
    """Training cannot go on (non-finite losses, bad data); the last good checkpoint is kept."""


class TrainConfig(FrozenConfig):
    """The one GAN training loop's settings (shared by the base model, LoRA and the baselines)."""

    steps: int = Field(600, ge=1)
    batch_size: int = Field(8, ge=1)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    # linear / cosine: both learning rates from their value at step 0 down to 0 at `steps`
    lr_decay: Literal["constant", "linear", "cosine"] = "constant"
    gan_loss: Literal["lsgan", "hinge"] = "lsgan"
    lambda_gan: float = Field(1.0, ge=0)
    lambda_l1: float = Field(100.0, ge=0)
    lambda_lpips: float = Field(0.0, ge=0)  # perceptual loss with the offline LPIPS backbone
    ndf: int = Field(32, ge=8)  # PatchGAN width
    ema: float = Field(0.0, ge=0, lt=1)  # 0 = off; e.g. 0.999
    ckpt_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    flip: bool = True  # random horizontal flips (same for input and target)
    seed: int = 0
    # bf16: forward passes and losses under torch.autocast in bfloat16 (weights, gradients and optimiser state stay
    # fp32); fast on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX), slow on others
    precision: Literal["fp32", "bf16"] = "fp32"


# ----------------------------------------------------------------------------- device


def autocast(cfg: TrainConfig, dev: torch.device) -> torch.autocast:
    """The forward passes' precision context: bfloat16 autocast under `precision: bf16`, a no-op under fp32."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, as oneDNN sees it)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(cfg: TrainConfig, dev: torch.device) -> None:
    """Warn where bf16 would be emulated (a CPU without native bf16): it still trains, more slowly than fp32."""
    if cfg.precision == "bf16" and dev.type == "cpu" and not native_bf16():
        log.warning("precision bf16 on a CPU without native bf16 instructions is slower than fp32; set precision: fp32")


def train_device() -> torch.device:
    """The device `fit` trains on, from E2GAN_DEVICE (see the module docstring)."""
    want = os.environ.get("E2GAN_DEVICE", "auto").strip().lower() or "auto"
    if want == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(want)
    except (RuntimeError, ValueError):
        raise E2GANError(f"E2GAN_DEVICE={want!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise E2GANError(
            f"E2GAN_DEVICE={want!r} but torch sees {torch.cuda.device_count()} CUDA device(s) "
            f"(torch {torch.__version__}); unset E2GAN_DEVICE to train on the CPU, or install a CUDA "
            "build of torch (README: Training on a GPU)"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise E2GANError("E2GAN_DEVICE='mps' but this torch has no MPS backend; unset E2GAN_DEVICE to use the CPU")
    return dev


def move_models(m: Models, dev: torch.device) -> None:
    """G, D and the EMA copy to `dev`, with the optimisers' parameter references and state.

    `Module.to` keeps the Parameter objects for CPU <-> CUDA but may swap in new ones (other device
    types, or torch's swap-on-conversion setting), which would leave an optimiser stepping stale
    tensors: so the optimisers are re-pointed by position, and their state tensors moved."""
    for module, opt in ((m.G, m.opt_g), (m.D, m.opt_d), (m.ema, None)):
        if module is None:
            continue
        old = list(module.parameters())
        module.to(dev)
        if opt is None:
            continue
        new = {id(a): b for a, b in zip(old, module.parameters())}
        for group in opt.param_groups:
            group["params"] = [new.get(id(p), p) for p in group["params"]]
        opt.state = defaultdict(dict, {new.get(id(p), p): st for p, st in opt.state.items()})
        for st in opt.state.values():
            for k, v in st.items():
                if torch.is_tensor(v) and k != "step":
                    st[k] = v.to(dev)


# ----------------------------------------------------------------------------- one step


@dataclass
class Models:
    G: nn.Module
    D: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: nn.Module | None = None


def build_models(G: nn.Module, cfg: TrainConfig, params: list[nn.Parameter] | list[dict] | None = None) -> Models:
    """A PatchGAN and Adam optimisers for G (`params`: only these are trained, e.g. LoRA weights, or Adam's
    parameter groups with their own rates)."""
    torch.manual_seed(cfg.seed)  # D's init
    D = PatchDiscriminator(ndf=cfg.ndf)
    trainable = params if params is not None else [p for p in G.parameters() if p.requires_grad]
    opt_g = torch.optim.Adam(trainable, lr=cfg.lr_g, betas=(cfg.beta1, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, 0.999))
    ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema > 0 else None
    return Models(G, D, opt_g, opt_d, ema)


def gan_step(
    m: Models,
    x: torch.Tensor,
    y: torch.Tensor,
    text: torch.Tensor,
    mask: torch.Tensor,
    cfg: TrainConfig,
    perceptual: Callable | None = None,
) -> dict[str, float]:
    """One discriminator and one generator update (pix2pix, Isola et al. 2017, eq. 4). Returns the losses."""
    _, g_loss_fn = GAN_LOSSES[cfg.gan_loss]
    with autocast(cfg, x.device):
        fake = m.G(x, text, mask).float()  # losses on fp32 images under bf16
    losses: dict[str, torch.Tensor] = {}
    # 1. discriminator: real pairs vs generated pairs
    if cfg.lambda_gan > 0:
        losses["d"] = d_step(m, x, y, fake, cfg)
    # 2. generator: fool D, stay close to the teacher
    m.opt_g.zero_grad(set_to_none=True)
    total = torch.zeros((), device=x.device)
    if cfg.lambda_gan > 0:
        with autocast(cfg, x.device):
            losses["g_gan"] = g_loss_fn(m.D(x, fake).float())
        total = total + cfg.lambda_gan * losses["g_gan"]
    losses["l1"] = l1(fake, y)
    total = total + cfg.lambda_l1 * losses["l1"]
    if cfg.lambda_lpips > 0 and perceptual is not None:
        with autocast(cfg, x.device):
            losses["lpips"] = perceptual(fake, y).float().mean()
        total = total + cfg.lambda_lpips * losses["lpips"]
    losses["g_total"] = total
    total.backward()
    m.opt_g.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def d_step(m: Models, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """One discriminator update: the teacher's pairs (x, y) as real, (x, fake) as generated (no gradient reaches
    the generator). Returns the loss."""
    m.opt_d.zero_grad(set_to_none=True)
    with autocast(cfg, x.device):
        loss = GAN_LOSSES[cfg.gan_loss][0](m.D(x, y).float(), m.D(x, fake.detach()).float())
    loss.backward()
    m.opt_d.step()
    return loss


def lr_schedulers(m: Models, cfg: TrainConfig, step: int) -> list[torch.optim.lr_scheduler.LRScheduler]:
    """cfg.lr_decay as torch schedulers over both optimisers, positioned at `step` (a resumed run's optimisers
    carry each group's initial rate; one saved without a schedule ran at its initial rate); none for "constant"."""
    if cfg.lr_decay == "constant":
        return []
    for opt in (m.opt_g, m.opt_d):
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def factor(s: int) -> float:
        done = min(s, cfg.steps) / cfg.steps
        return 1.0 - done if cfg.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))

    return [torch.optim.lr_scheduler.LambdaLR(opt, factor, last_epoch=step - 1) for opt in (m.opt_g, m.opt_d)]


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)


# ----------------------------------------------------------------------------- checkpoints


def _state(m: Models, step: int, history: list[dict]) -> dict:
    return {
        "step": step,
        "G": m.G.state_dict(),
        "D": m.D.state_dict(),
        "opt_g": m.opt_g.state_dict(),
        "opt_d": m.opt_d.state_dict(),
        "ema": m.ema.state_dict() if m.ema is not None else None,
        "history": history,
    }


def save_checkpoint(path: Path, m: Models, step: int, history: list[dict]) -> None:
    """Our own training state (tensors, numbers, lists): written atomically, read with weights_only=True."""
    with atomic_path(path) as tmp:
        torch.save(_state(m, step, history), tmp)


def load_checkpoint(path: Path, m: Models) -> tuple[int, list[dict]]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    m.G.load_state_dict(state["G"])
    m.D.load_state_dict(state["D"])
    m.opt_g.load_state_dict(state["opt_g"])
    m.opt_d.load_state_dict(state["opt_d"])
    if m.ema is not None and state["ema"] is not None:
        m.ema.load_state_dict(state["ema"])
    return int(state["step"]), list(state["history"])


# ----------------------------------------------------------------------------- distributed


def init_distributed() -> tuple[int, int]:
    """Join the process group when started by `torchrun` (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU.
    Returns (rank, world_size); (0, 1) for an ordinary run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():  # one GPU per process (torchrun sets LOCAL_RANK)
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if not torch.cuda.is_available():  # share the cores instead of oversubscribing them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return dist.get_rank(), dist.get_world_size()


def dist_info() -> tuple[int, int]:
    """(rank, world_size) of the current process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_over_ranks(losses: dict[str, float], world: int) -> dict[str, float]:
    import torch.distributed as dist

    keys = sorted(losses)
    t = torch.tensor([losses[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t)}


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ----------------------------------------------------------------------------- fit


def lpips_loss(
    net: str = "alex", device: torch.device | str = "cpu"
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """LPIPS with the offline backbone as a training loss (frozen; gradients flow to the images)."""
    from pipeline.core.metrics import lpips_model

    model = lpips_model(net)  # shared with the metrics on the CPU: a copy goes to another device
    if torch.device(device).type != "cpu":
        model = copy.deepcopy(model).to(device)
    return lambda a, b: model(a, b)


EvalHook = Callable[[nn.Module, int, float], None]  # (model in eval mode on the CPU, step, train seconds)


class _Clock:
    """Training seconds: wall time minus what the evaluation hook took (GPU work is synchronised first)."""

    def __init__(self, dev: torch.device):
        self.dev, self.start, self.paused = dev, time.perf_counter(), 0.0

    def train_seconds(self) -> float:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        return time.perf_counter() - self.start - self.paused


def _run_hook(evaluate: EvalHook, m: Models, dev: torch.device, step: int, clock: _Clock) -> None:
    """Call the evaluation hook on the trained model (the EMA copy when there is one), on the CPU, untimed."""
    seconds, t0 = clock.train_seconds(), time.perf_counter()
    if dev.type != "cpu":
        move_models(m, torch.device("cpu"))
    model = m.ema if m.ema is not None else m.G
    evaluate(model.eval(), step, seconds)
    m.G.train()
    if dev.type != "cpu":
        move_models(m, dev)
    clock.paused += time.perf_counter() - t0


def _stepper(m: Models, dev: torch.device, world: int) -> Models:
    """The models `gan_step` updates: the same optimisers over DDP wrappers under torchrun (checkpoints keep
    the plain modules)."""
    if world <= 1:
        return m
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [dev.index] if dev.type == "cuda" else None
    return Models(DDP(m.G, device_ids=ids), DDP(m.D, device_ids=ids), m.opt_g, m.opt_d, m.ema)


def _batch(data: PairData, step: int, cfg: TrainConfig, dev: torch.device, rank: int, world: int):
    x, y, text, mask = data.batch(step, cfg.batch_size, cfg.seed, cfg.flip)
    if world > 1:
        x, y, text, mask = (t[rank::world] for t in (x, y, text, mask))
    if dev.type != "cpu":
        x, y, text, mask = (t.to(dev, non_blocking=True) for t in (x, y, text, mask))
    return x, y, text, mask


def _check_finite(losses: dict[str, float], desc: str, step: int, ckpt: Path) -> None:
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        raise TrainingError(
            f"{desc}: step {step}: loss {', '.join(f'{k}={losses[k]}' for k in bad)} is not finite; "
            f"the last good checkpoint is kept at {ckpt}; lower lr_g/lr_d or lambda_l1"
        )


def fit(
    m: Models,
    data: PairData,
    cfg: TrainConfig,
    work: Path,
    desc: str = "train",
    perceptual: Callable | None = None,
    on_log: Callable[[dict], None] | None = None,
    evaluate: EvalHook | None = None,
    eval_every: int = 0,
    eval_from: int = 0,
) -> list[dict]:
    """Train for cfg.steps, resuming from `work/last.pt` if present; returns the loss history.

    A checkpoint is written every `ckpt_every` steps and at the end. A non-finite loss stops training
    with a TrainingError; the last good checkpoint stays in place. With `evaluate`, the hook is called
    every `eval_every` steps from step `eval_from` on, and at the end (rank 0 only); its time is not counted as
    training time.
    """
    # 1. device, losses, processes, and the checkpoint to resume from
    work.mkdir(parents=True, exist_ok=True)
    dev = train_device()
    check_precision(cfg, dev)
    if cfg.lambda_lpips > 0 and perceptual is None:
        perceptual = lpips_loss(device=dev)
    ckpt = work / "last.pt"
    rank, world = dist_info()
    move_models(m, dev)
    if cfg.batch_size % world:
        raise TrainingError(f"{desc}: batch_size {cfg.batch_size} does not split over {world} processes")
    step, history = load_checkpoint(ckpt, m) if ckpt.is_file() else (0, [])
    if step and rank == 0:
        log.info("%s: resuming from step %d (%s)", desc, step, ckpt)
    m.G.train()
    stepper, resumed_from, clock, window = _stepper(m, dev, world), step, _Clock(dev), []
    schedulers = lr_schedulers(m, cfg, step)
    # 2. the steps: update, log, checkpoint, evaluate
    with bar(desc, cfg.steps, unit="it", completed=step, visible=None if rank == 0 else False) as b:
        while step < cfg.steps:
            losses = gan_step(stepper, *_batch(data, step, cfg, dev, rank, world), cfg, perceptual)
            if world > 1:
                losses = _mean_over_ranks(losses, world)
            _check_finite(losses, desc, step, ckpt)
            for sched in schedulers:
                sched.step()
            if m.ema is not None:
                update_ema(m.ema, m.G, cfg.ema)
            step += 1
            window.append(losses)
            if step % cfg.log_every == 0 or step == cfg.steps:
                history.append({"step": step, **{k: float(np.mean([w[k] for w in window])) for k in window[0]}})
                window = []
                rate = (step - resumed_from) / max(1e-9, clock.train_seconds())
                _log_row(history[-1], b, desc, cfg, rank, len(history), rate, on_log)
            b.advance(1)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                if rank == 0:
                    save_checkpoint(ckpt, m, step, history)
                _barrier(world)
            if (
                evaluate is not None
                and rank == 0
                and (step == cfg.steps or (eval_every and step % eval_every == 0 and step >= eval_from))
            ):
                _run_hook(evaluate, m, dev, step, clock)
    if rank == 0:
        log.info("%s: %d steps in %.1f s", desc, cfg.steps, clock.train_seconds())
    if dev.type != "cpu":
        move_models(m, torch.device("cpu"))  # callers save, evaluate and export on the CPU
    return history


def _log_row(row: dict, b, desc: str, cfg: TrainConfig, rank: int, n_rows: int, rate: float, on_log) -> None:
    """A logged row to the caller's hook, the progress bar's status and (without a bar) the plain log."""
    text = " ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "step")
    if on_log and rank == 0:
        on_log(row)
    if rank == 0 and not b.visible and (n_rows % 5 == 0 or row["step"] == cfg.steps):
        log.info("%s: step %d/%d %s (%.2f it/s)", desc, row["step"], cfg.steps, text, rate)
    b.advance(0, status=text)
