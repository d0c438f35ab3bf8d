"""The E²GAN generator: a small text-conditioned image-to-image network with one attention block.

Downsample (stem + 2 strided convs) -> ResBlock x2 -> DS -> Transformer block (self-attention,
cross-attention to text tokens, MLP) at 1/8 resolution -> US -> ResBlock -> Upsample x2 -> output.
Upsampling is nearest `Upsample` + `Conv2d` (peft cannot wrap ConvTranspose2d). By default the
output is a change of the input (a zero-initialised head on top of atanh(x)): the untrained network
is the identity, so short CPU budgets start from "input passed through" instead of from noise. With `skip`, the
stem's full-resolution features are added to the last Upsample's output, so the head can make pixel-level edits
(sharpening, film grain) that the 1/4-resolution body cannot carry; it adds no parameters. Module names are
stable because layer analysis and LoRA refer to them: `down.0..2`, `res.0..2`, `ds`, `tb.*`, `us`,
`up.0..1`, `out`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipeline.core.frozen import FrozenConfig


class GeneratorConfig(FrozenConfig):
    """Everything that rebuilds the generator: params.yaml's `train_base.generator`, saved beside every
    checkpoint (`text_dim` is set from the text encoder when the generator is built)."""

    ngf: int = Field(32, ge=8)  # width of the stem; the body runs at 4*ngf
    text_dim: int = Field(384, ge=1)  # MiniLM; 512/768 for CLIP text encoders
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    # film: text-conditioned instance norm (the prompt sets every norm's scale and shift); instance: plain
    # InstanceNorm, the text reaches only the transformer block
    norm: Literal["instance", "film", "group", "batch", "none"] = "film"
    residual: bool = True  # predict the edit as a change of the input: starts at identity, learns fast
    # add the stem's full-resolution features before the head (no parameters): pixel-level edits such as
    # sharpening cannot pass the 1/4-resolution body
    skip: bool = True
    in_channels: int = 3
    out_channels: int = 3

    def to_dict(self) -> dict:
        return self.model_dump()


class TextNorm(nn.Module):
    """Text-conditioned instance norm (conditional instance norm, Dumoulin et al. 2017; FiLM): instance
    normalisation whose per-channel scale and shift come from the pooled text embedding through two
    Linear layers (`to_scale`, `to_shift`, adaptable by LoRA). Zero-initialised weights: it starts as
    a plain affine InstanceNorm and learns how each prompt restyles the channel statistics."""

    def __init__(self, ch: int, text_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(ch, affine=False)
        self.to_scale = nn.Linear(text_dim, ch)
        self.to_shift = nn.Linear(text_dim, ch)
        for lin, bias in ((self.to_scale, 1.0), (self.to_shift, 0.0)):
            nn.init.zeros_(lin.weight)
            nn.init.constant_(lin.bias, bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.to_scale(cond)[:, :, None, None] + self.to_shift(cond)[:, :, None, None]


def apply_norm(norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    return norm(x, cond) if isinstance(norm, TextNorm) else norm(x)


def pooled_text(text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, D) tokens -> (B, D): the mean over the real (unmasked) tokens."""
    if mask is None:
        return text.mean(1)
    m = mask.to(text.dtype)[:, :, None]
    return (text * m).sum(1) / m.sum(1).clamp(min=1.0)


@torch.no_grad()
def freeze_text_norms(G: nn.Module, text: torch.Tensor, mask: torch.Tensor | None) -> nn.Module:
    """A copy of G for one fixed prompt: every TextNorm becomes an affine InstanceNorm2d whose weight and
    bias are that prompt's scale and shift. The output is unchanged; the exported graph holds one
    vector per norm instead of the two text Linear layers (a concept model as small as with plain
    InstanceNorm). G itself is left as it is."""
    import copy

    G = copy.deepcopy(G).eval()
    cond = pooled_text(text[:1], None if mask is None else mask[:1])
    for _, module in list(G.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, TextNorm):
                norm = nn.InstanceNorm2d(child.to_scale.out_features, affine=True, eps=child.norm.eps)
                norm.weight.copy_(child.to_scale(cond)[0])
                norm.bias.copy_(child.to_shift(cond)[0])
                setattr(module, child_name, norm)
    return G


def make_norm(kind: str, ch: int, text_dim: int = 0) -> nn.Module:
    if kind == "film":
        if text_dim <= 0:
            raise ValueError("norm 'film' needs the text embedding width (text_dim)")
        return TextNorm(ch, text_dim)
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, ch), ch)
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm {kind!r} is not one of: instance, film, group, batch, none")


class ConvBlock(nn.Module):
    """[Upsample ->] reflect-pad -> conv -> norm -> ReLU; `.conv` is the adaptable layer.

    Padding is a separate layer (as in pix2pix) rather than `padding_mode="reflect"`: peft's LoRA conv
    zero-pads, so with a reflect-padding conv the merged and unmerged models would differ at borders.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        norm: str = "instance",
        upsample: bool = False,
        text_dim: int = 0,
    ):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest") if upsample else None
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv = nn.Conv2d(cin, cout, k, stride=stride)
        self.norm = make_norm(norm, cout, text_dim)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        return self.act(apply_norm(self.norm, self.conv(self.pad(x)), cond))


class ResBlock(nn.Module):
    """x + conv-norm-relu-conv-norm (pix2pix's ResnetBlock with reflect padding)."""

    def __init__(self, ch: int, norm: str, text_dim: int = 0):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv1 = nn.Conv2d(ch, ch, 3)
        self.norm1 = make_norm(norm, ch, text_dim)
        self.conv2 = nn.Conv2d(ch, ch, 3)
        self.norm2 = make_norm(norm, ch, text_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(apply_norm(self.norm1, self.conv1(self.pad(x)), cond))
        return x + apply_norm(self.norm2, self.conv2(self.pad(h)), cond)


class Attention(nn.Module):
    """Multi-head attention with named projections (to_q, to_k, to_v, to_out) for LoRA."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.to_q(x).view(b, n, h, d // h).transpose(1, 2)  # (B, h, N, d/h)
        k = self.to_k(context).view(b, context.shape[1], h, d // h).transpose(1, 2)
        v = self.to_v(context).view(b, context.shape[1], h, d // h).transpose(1, 2)
        attn_mask = None if mask is None else mask[:, None, None, :].bool()  # (B, 1, 1, T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the text tokens, and an MLP, on (B, C, H, W) maps."""

    def __init__(self, dim: int, text_dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn_self = Attention(dim, dim, heads)
        self.attn_cross = Attention(dim, text_dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, hidden))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        y = self.norm1(t)
        t = t + self.attn_self(y, y)
        t = t + self.attn_cross(self.norm2(t), text, mask)
        t = t + self.mlp(self.norm3(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class E2GANGenerator(nn.Module):
    """(B, 3, H, W) in [-1, 1] + text tokens (B, T, text_dim) -> (B, 3, H, W) in [-1, 1]; H, W multiples of 16."""

    def __init__(self, cfg: GeneratorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else GeneratorConfig()
        c, n, t = cfg.ngf, cfg.norm, cfg.text_dim
        self.down = nn.ModuleList(
            [
                ConvBlock(cfg.in_channels, c, 7, norm=n, text_dim=t),  # (B, c, H, W)
                ConvBlock(c, 2 * c, 3, stride=2, norm=n, text_dim=t),  # (B, 2c, H/2, W/2)
                ConvBlock(2 * c, 4 * c, 3, stride=2, norm=n, text_dim=t),  # (B, 4c, H/4, W/4)
            ]
        )
        self.res = nn.ModuleList([ResBlock(4 * c, n, t) for _ in range(3)])  # res.0, res.1 before; res.2 after
        self.ds = ConvBlock(4 * c, 4 * c, 3, stride=2, norm=n, text_dim=t)  # (B, 4c, H/8, W/8)
        self.tb = TransformerBlock(4 * c, cfg.text_dim, cfg.heads, cfg.mlp_ratio)
        self.us = ConvBlock(4 * c, 4 * c, 3, norm=n, upsample=True, text_dim=t)  # (B, 4c, H/4, W/4)
        self.up = nn.ModuleList(
            [
                ConvBlock(4 * c, 2 * c, 3, norm=n, upsample=True, text_dim=t),  # (B, 2c, H/2, W/2)
                ConvBlock(2 * c, c, 3, norm=n, upsample=True, text_dim=t),  # (B, c, H, W)
            ]
        )
        self.out_pad = nn.ReflectionPad2d(3)
        self.out = nn.Conv2d(c, cfg.out_channels, 7)
        if cfg.residual:  # zero-initialised head: the untrained generator is exactly the identity
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        # a concept's output curve and outline gate (nets/tone.py), set by finetune_lora.tone_knots / tone_window:
        # never part of the base
        self.register_module("tone", None)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        cond = pooled_text(text, mask) if any(isinstance(m, TextNorm) for m in self.modules()) else None
        h = stem = self.down[0](x, cond)  # (B, ngf, H, W)
        for block in self.down[1:]:
            h = block(h, cond)
        h = self.res[1](self.res[0](h, cond), cond)
        h = self.tb(self.ds(h, cond), text, mask)
        h = self.res[2](self.us(h, cond), cond)
        for block in self.up:
            h = block(h, cond)
        if self.cfg.skip:  # pixel-level detail (sharpening, grain) cannot pass the 1/4-resolution body
            h = h + stem
        y = self.out(self.out_pad(h))
        if self.cfg.residual:  # tanh keeps the sum in [-1, 1]; atanh(x) makes a zero change exact
            xc = x.clamp(-0.999, 0.999)
            out = torch.tanh(0.5 * torch.log((1 + xc) / (1 - xc)) + y)  # atanh, spelled out for ONNX export
        else:
            out = torch.tanh(y)
        return out if self.tone is None else self.tone(out, x)
