"""Mamba's fused mixer on CUDA (conv, x_proj, dt_proj, selective scan, gate, out_proj) with out_proj's LoRA
applied as a low-rank product instead of folded into the weight.

mamba-ssm's `MambaInnerFn` reads out_proj's weight as one matrix and its backward always computes that
matrix's gradient: with the adapter folded in (`W + s·B·A`), a LoRA step pays a full d_model x d_inner
weight-gradient GEMM per layer only to project it down to rank r. Here the frozen W gets no gradient
unless it trains, and each adapter's gradients come from skinny products with the gate output that the
backward recomputes anyway, so memory stays as low as mamba-ssm's. x_proj and dt_proj stay folded: their
weight gradients are small. The rest follows mamba-ssm 2.3's `MambaInnerFn` (checkpoint level 1, real A,
B and C from x_proj), whose CUDA kernels it calls, except the selective scan: ours (scan_cuda.py) where it
takes the shapes. With ours, rows of packed documents run here too: the scan resets where one starts and the
conv reads `seq_idx`.
"""

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.amp import custom_bwd, custom_fwd

try:  # optional: only with the causal-conv1d wheel
    from causal_conv1d.cpp_functions import causal_conv1d_bwd_function, causal_conv1d_fwd_function
except ImportError:
    causal_conv1d_fwd_function = causal_conv1d_bwd_function = None

from worker.engine import scan_cuda
from worker.engine.documents import document_starts
from worker.engine.kernels import selective_scan_cuda
from worker.engine.lora_weights import LoraFactors


def _to_rows(x: Tensor) -> Tensor:
    """(b, d, l) -> (b·l, d)."""
    return x.transpose(1, 2).reshape(-1, x.shape[1])


def _to_columns(x: Tensor) -> Tensor:
    """(b, d, l) -> (d, b·l)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _from_columns(x: Tensor, batch: int) -> Tensor:
    """(d, b·l) -> (b, d, l), a view."""
    return x.view(x.shape[0], batch, -1).transpose(0, 1)


def _states_input(x_dbl: Tensor, columns: slice, batch: int) -> Tensor:
    """B or C, (b·l, n) columns of x_dbl -> (b, 1, n, l) contiguous, as the scan kernel reads it."""
    part = x_dbl[:, columns]
    return part.view(batch, -1, part.shape[1]).transpose(1, 2).unsqueeze(1).contiguous()


def _channel_last(t: Tensor) -> Tensor:
    """t (b, d, l) laid out with d contiguous, the only layout in which causal-conv1d reads `seq_idx`."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _conv(x: Tensor, weight: Tensor, bias: Tensor | None, seq_idx: Tensor | None) -> Tensor:
    """silu(causal conv) of x (b, d, l), length contiguous like its result; with packed documents' `seq_idx`, no
    output reads an earlier document's input (through the channel-last layout, copied there and back)."""
    if seq_idx is None:
        return causal_conv1d_fwd_function(x, weight, bias, None, None, None, True)
    return causal_conv1d_fwd_function(_channel_last(x), weight, bias, seq_idx, None, None, True).contiguous()


def _conv_backward(
    x: Tensor, weight: Tensor, bias: Tensor | None, seq_idx: Tensor | None, dout: Tensor, dx: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """_conv's gradients given dout: written into dx (length contiguous); the weight's and bias' returned."""
    if seq_idx is None:
        _, dweight, dbias, _ = causal_conv1d_bwd_function(x, weight, bias, dout, None, None, None, dx, False, True)
        return dx, dweight, dbias
    last, dweight, dbias, _ = causal_conv1d_bwd_function(
        _channel_last(x), weight, bias, _channel_last(dout), seq_idx, None, None, None, False, True
    )
    return dx.copy_(last), dweight, dbias


class MambaInnerLora(torch.autograd.Function):
    @staticmethod
    @custom_fwd(device_type="cuda")
    def forward(
        ctx,
        xz,
        conv_weight,
        conv_bias,
        x_proj_weight,
        dt_proj_weight,
        out_weight,
        out_bias,
        A,
        D,
        dt_bias,
        seq_idx,
        scales,
        *factors,
    ):
        if torch.is_autocast_enabled("cuda"):
            half = torch.get_autocast_dtype("cuda")
            x_proj_weight, dt_proj_weight, out_weight = (
                w.to(half) for w in (x_proj_weight, dt_proj_weight, out_weight)
            )
            out_bias = out_bias.to(half) if out_bias is not None else None
            factors = tuple(f.to(half) for f in factors)
        batch, rank, n = xz.shape[0], dt_proj_weight.shape[1], A.shape[-1]
        xz = xz if xz.stride(-1) == 1 else xz.contiguous()
        conv_weight = conv_weight.squeeze(1)
        conv_bias = conv_bias.contiguous() if conv_bias is not None else None
        x, z = xz.chunk(2, dim=1)
        conv_out = _conv(x, conv_weight, conv_bias, seq_idx)
        x_dbl = F.linear(_to_rows(conv_out), x_proj_weight)  # (b·l, rank + 2n)
        delta = _from_columns(dt_proj_weight @ x_dbl[:, :rank].t(), batch)
        B = _states_input(x_dbl, slice(rank, rank + n), batch)
        C = _states_input(x_dbl, slice(-n, None), batch)
        D = D.contiguous()
        ctx.own_scan = scan_cuda.available(conv_out, A, B)
        reset = None if seq_idx is None else document_starts(seq_idx)
        if ctx.own_scan:
            out, out_z = scan_cuda.forward(conv_out, delta, A, B, C, D, z, dt_bias, reset)
            scan_intermediates = None
        elif reset is not None:
            raise ValueError("packed documents need our selective scan, which resets the state (scan_cuda.available)")
        else:
            out, scan_intermediates, out_z = selective_scan_cuda.fwd(conv_out, delta, A, B, C, D, z, dt_bias, True)
        ctx.scales = scales
        ctx.has_out_bias = out_bias is not None
        # conv_out and delta are recomputed in backward, as mamba-ssm's checkpoint level 1 does.
        ctx.save_for_backward(
            xz,
            conv_weight,
            conv_bias,
            x_dbl,
            x_proj_weight,
            dt_proj_weight,
            out_weight,
            A,
            B,
            C,
            D,
            dt_bias,
            scan_intermediates,
            out,
            seq_idx,
            reset,
            *factors,
        )
        result = F.linear(out_z.transpose(1, 2), out_weight, out_bias)  # (b, l, d_model)
        flat = result.view(-1, result.shape[-1])
        for scale, lora_A, lora_B in zip(scales, factors[::2], factors[1::2], strict=True):
            # A·y batched over the sequence reads out_z in place; the add rides on the second GEMM.
            low = torch.matmul(lora_A, out_z).transpose(1, 2).reshape(-1, lora_A.shape[0])  # (b·l, r)
            flat.addmm_(low, lora_B.t(), alpha=scale)
        return result

    @staticmethod
    @custom_bwd(device_type="cuda")
    def backward(ctx, dout):
        (
            xz,
            conv_weight,
            conv_bias,
            x_dbl,
            x_proj_weight,
            dt_proj_weight,
            out_weight,
            A,
            B,
            C,
            D,
            dt_bias,
            scan_intermediates,
            out,
            seq_idx,
            reset,
            *factors,
        ) = ctx.saved_tensors
        batch, rank, n = xz.shape[0], dt_proj_weight.shape[1], A.shape[-1]
        x, z = xz.chunk(2, dim=1)
        conv_out = _conv(x, conv_weight, conv_bias, seq_idx)
        delta = _from_columns(dt_proj_weight @ x_dbl[:, :rank].t(), batch)
        dxz = torch.empty_like(xz)
        dx, dz = dxz.chunk(2, dim=1)
        dout = dout.reshape(-1, dout.shape[-1]).t()  # (d_model, b·l)
        adapters = list(zip(ctx.scales, factors[::2], factors[1::2], strict=True))
        # The gradient reaching the gate output: Wᵀ·dout plus each adapter's s·Aᵀ·(Bᵀ·dout).
        dgated = out_weight.t() @ dout
        projected = []
        for scale, lora_A, lora_B in adapters:
            projected.append(lora_B.t() @ dout)  # (r, b·l)
            dgated.addmm_(lora_A.t(), projected[-1], alpha=scale)
        if ctx.own_scan:
            want = ctx.needs_input_grad[7:10]
            g = scan_cuda.backward(
                conv_out, delta, A, B, C, D, z, dt_bias, _from_columns(dgated, batch), out,
                reset=reset, dz=dz, want_A=want[0], want_D=want[1], want_delta_bias=want[2], out_z=True,
            )  # fmt: skip
            dconv_out, ddelta, dA, dB, dC, dD, ddt_bias, out_z = (
                g.du, g.ddelta, g.dA, g.dB, g.dC, g.dD, g.ddelta_bias, g.out_z
            )  # fmt: skip
        else:
            dconv_out, ddelta, dA, dB, dC, dD, ddt_bias, dz, out_z = selective_scan_cuda.bwd(
                conv_out, delta, A, B, C, D, z, dt_bias, _from_columns(dgated, batch), scan_intermediates, out, dz,
                True, True,
            )  # fmt: skip
        # The adapters' gradients read out_z as the kernel left it, (b, d_inner, l): no transposed copy.
        dfactors = []
        for (scale, lora_A, _), through_B in zip(adapters, projected, strict=True):
            per_seq = through_B.view(-1, batch, out_z.shape[-1]).transpose(0, 1)  # (b, r, l)
            d_lora_A = torch.bmm(per_seq, out_z.transpose(1, 2)).sum(0)  # (r, d_inner)
            low = torch.matmul(lora_A, out_z).transpose(0, 1).reshape(lora_A.shape[0], -1)  # (r, b·l)
            dfactors += [scale * d_lora_A, scale * (dout @ low.t())]
        dout_weight = dout @ _to_columns(out_z).t() if ctx.needs_input_grad[5] else None
        dout_bias = dout.sum(dim=1) if ctx.has_out_bias else None

        dx_dbl = torch.empty_like(x_dbl)
        dx_dbl[:, rank : rank + n] = dB.squeeze(1).transpose(1, 2).reshape(-1, n)
        dx_dbl[:, -n:] = dC.squeeze(1).transpose(1, 2).reshape(-1, n)
        ddelta = _to_columns(ddelta)  # (d_inner, b·l)
        ddt_proj_weight = ddelta @ x_dbl[:, :rank] if ctx.needs_input_grad[4] else None
        dx_dbl[:, :rank] = ddelta.t() @ dt_proj_weight
        dx_proj_weight = dx_dbl.t() @ _to_rows(conv_out) if ctx.needs_input_grad[3] else None
        dconv_out = _to_columns(dconv_out).addmm_(x_proj_weight.t(), dx_dbl.t())
        dx, dconv_weight, dconv_bias = _conv_backward(
            x, conv_weight, conv_bias, seq_idx, _from_columns(dconv_out, batch), dx
        )
        return (
            dxz,
            dconv_weight.unsqueeze(1),
            dconv_bias if conv_bias is not None else None,
            dx_proj_weight,
            ddt_proj_weight,
            dout_weight,
            dout_bias,
            dA,
            dD,
            ddt_bias,
            None,
            None,
            *dfactors,
        )


def mamba_inner_lora(
    xz: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    x_proj_weight: Tensor,
    dt_proj_weight: Tensor,
    out_weight: Tensor,
    out_bias: Tensor | None,
    out_adapters: list[LoraFactors],
    A: Tensor,
    D: Tensor,
    dt_bias: Tensor,
    seq_idx: Tensor | None = None,
) -> Tensor:
    """The mixer's output (b, l, d_model) from in_proj's output `xz` (b, 2·d_inner, l); out_proj is `out_weight`
    plus `out_adapters` (dropout-free: the API refuses dropout on out_proj). `seq_idx` (b, l): packed documents,
    each from a zero state (with our scan only: scan_cuda.available)."""
    scales = tuple(f.scale for f in out_adapters)
    factors = [t for f in out_adapters for t in (f.A, f.B)]
    return MambaInnerLora.apply(
        xz,
        conv_weight,
        conv_bias,
        x_proj_weight,
        dt_proj_weight,
        out_weight,
        out_bias,
        A,
        D,
        dt_bias,
        None if seq_idx is None else seq_idx.int().contiguous(),
        scales,
        *factors,
    )
