"""A concept model rewritten for other runtimes, with the same outputs: the layers that OpenCV's DNN module,
ExecuTorch's XNNPACK backend and the phone converters reject or run slowly are spelled out in operators every one
of them has. The generator used for training is left as it is; these copies only feed the exporters, and every
export is checked against the unrewritten model.

- attention: `scaled_dot_product_attention` becomes matmul -> softmax -> matmul (OpenCV fuses the SDPA graph
  into an Attention layer that wants packed QKV weights and refuses the model);
- `portable=True` (ExecuTorch, LiteRT, Core ML) also rewrites what XNNPACK cannot take, which would otherwise
  run in slow portable kernels: reflection padding as slices + concat, instance and layer norm as mean/var
  arithmetic, 2x nearest upsampling as concatenated copies, and padded transposed convolutions as unpadded ones,
  cropped (all exact).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pipeline.model.nets.generator import Attention


class ExplicitAttention(nn.Module):
    """Attention's maths with matmuls and softmax; the mask (1 = real token) becomes an additive bias."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.heads = attn.heads
        self.to_q, self.to_k, self.to_v, self.to_out = attn.to_q, attn.to_k, attn.to_v, attn.to_out

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # batched matmuls over (B * heads): a 4-D matmul becomes expand + bmm, and XNNPACK does not take the expands
        b, n, d = x.shape
        h, t = self.heads, context.shape[1]
        q = self.to_q(x).reshape(b, n, h, d // h).transpose(1, 2).reshape(b * h, n, d // h)
        k = self.to_k(context).reshape(b, t, h, d // h).permute(0, 2, 3, 1).reshape(b * h, d // h, t)
        v = self.to_v(context).reshape(b, t, h, d // h).transpose(1, 2).reshape(b * h, t, d // h)
        scores = torch.bmm(q, k) * (d // h) ** -0.5  # (B * h, N, T)
        if mask is not None:  # -1e4, not -inf: fp16 variants keep it finite, and exp(-1e4) is 0 in float32
            bias = (mask.to(scores.dtype) - 1.0) * 1e4
            scores = scores + bias[:, None, :].expand(b, h, t).reshape(b * h, 1, t)
        out = torch.bmm(torch.softmax(scores, -1), v)  # (B * h, N, d/h)
        return self.to_out(out.reshape(b, h, n, d // h).transpose(1, 2).reshape(b, n, d))


class SlicedReflectionPad(nn.Module):
    """ReflectionPad2d(p) as slices and concatenation (exact)."""

    def __init__(self, p: int):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = torch.cat(
            [x[:, :, :, i : i + 1] for i in range(p, 0, -1)] + [x] + [x[:, :, :, -1 - i : -i] for i in range(1, p + 1)],
            3,
        )
        return torch.cat(
            [x[:, :, i : i + 1] for i in range(p, 0, -1)] + [x] + [x[:, :, -1 - i : -i] for i in range(1, p + 1)], 2
        )


class ExplicitInstanceNorm(nn.Module):
    """InstanceNorm2d (affine or not) as per-channel mean and biased variance."""

    def __init__(self, norm: nn.InstanceNorm2d):
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight if norm.affine else None
        self.bias = norm.bias if norm.affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((2, 3), keepdim=True)
        centred = x - mean
        y = centred / torch.sqrt((centred * centred).mean((2, 3), keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


class ExplicitLayerNorm(nn.Module):
    """LayerNorm over the last dimension as mean and biased variance, computed on a (1, rows, C, 1) view: XNNPACK
    averages only the two inner dimensions of a 4-D tensor."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.eps, self.weight, self.bias = norm.eps, norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(1, -1, shape[-1], 1)
        centred = x - x.mean((2, 3), keepdim=True)
        y = centred / torch.sqrt((centred * centred).mean((2, 3), keepdim=True) + self.eps)
        return y.reshape(shape) * self.weight + self.bias


class NearestUp2x(nn.Module):
    """2x nearest upsampling as copies (exact): each pixel twice along W (a trailing axis of 2, flattened), then
    each row twice (a row concatenated with itself is two rows of the output). Reshapes, not unsqueezes:
    XNNPACK takes an unsqueeze on the trailing axis only; and each concatenation gets two distinct reshapes of its
    input, as XNNPACK's partitioner counts a tensor concatenated with itself as one input and rejects it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = torch.cat([x.reshape(b, c, h, w, 1), x.reshape(b, c, h, w, 1)], -1)
        return torch.cat([x.reshape(b, c, h, 2 * w), x.reshape(b, c, h, 2 * w)], 3).reshape(b, c, 2 * h, 2 * w)


class CroppedConvTranspose(nn.Module):
    """ConvTranspose2d with padding p and output padding op <= p as the unpadded transposed convolution cropped to
    [p, p + size) (exact): LiteRT's converter fails to lower the padded form (ResNet-9's upsampling)."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            padding=0,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        self.conv.weight, self.conv.bias = conv.weight, conv.bias
        self.padding, self.output_padding = conv.padding, conv.output_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        (ph, pw), (oh, ow) = self.padding, self.output_padding
        return y[:, :, ph : y.shape[2] - ph + oh, pw : y.shape[3] - pw + ow]


@torch.no_grad()
def rewritten(model: nn.Module, portable: bool = False) -> nn.Module:
    """A deep copy of `model` with the rewrites above; `model` is untouched. Run it on the exporter's input
    and compare with `model`: outputs agree to float rounding (tests check it)."""
    model = copy.deepcopy(model).eval()
    for _, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            new: nn.Module | None = None
            if isinstance(child, Attention):
                new = ExplicitAttention(child)
            elif portable and isinstance(child, nn.ReflectionPad2d):
                new = SlicedReflectionPad(int(child.padding[0]))
            elif portable and isinstance(child, nn.InstanceNorm2d):
                new = ExplicitInstanceNorm(child)
            elif (
                portable
                and isinstance(child, nn.ConvTranspose2d)
                and any(child.padding)
                and all(o <= p for o, p in zip(child.output_padding, child.padding))
            ):
                new = CroppedConvTranspose(child)
            elif portable and isinstance(child, nn.LayerNorm):
                new = ExplicitLayerNorm(child)
            elif portable and isinstance(child, nn.Upsample):
                if child.mode != "nearest" or float(child.scale_factor) != 2.0:
                    continue
                new = NearestUp2x()
            if new is not None:
                setattr(module, name, new)
    return model
