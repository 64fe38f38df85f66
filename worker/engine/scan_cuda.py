"""Our own Mamba-1 selective scan on CUDA (csrc/selective_scan.cu), forward and backward, for d_state 16.

It computes what mamba-ssm's `selective_scan_cuda` does with B and C varying in time, softplus(Δ + Δ bias), the
D skip and the silu(z) gate, plus document resets, and skips dA, dD and d(Δ bias) when those are frozen.
The library is built with nvcc on first use into MAMBAFT_KERNEL_DIR (default ~/.cache/mambaft/kernels), one file
per source and GPU architecture, and called through ctypes on the current stream (CUDA graphs capture it).
Without nvcc or a prebuilt library there, `available` is False and callers keep mamba-ssm's kernel.
"""

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).parent / "csrc" / "selective_scan.cu"
STATE_SIZE = 16
_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
log = logging.getLogger(__name__)

_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class _Params(ctypes.Structure):
    """ScanParams in selective_scan.cu, field for field."""

    _fields_ = [
        *((name, ctypes.c_int32) for name in ("batch", "dim", "seqlen", "dtype")),
        *((name, _P) for name in ("u", "delta", "z", "B", "C", "A", "D", "delta_bias", "reset")),
        *((name, _I64) for name in ("u_b", "u_d", "delta_b", "delta_d", "z_b", "z_d", "B_b", "B_n", "C_b", "C_n")),
        *((name, _P) for name in ("y", "out_z")),
        *((name, _I64) for name in ("y_b", "y_d", "out_z_b", "out_z_d")),
        *((name, _P) for name in ("dout", "du", "ddelta", "dz")),
        *((name, _I64) for name in ("dout_b", "dout_d", "du_b", "du_d", "ddelta_b", "ddelta_d", "dz_b", "dz_d")),
        *((name, _P) for name in ("dBC_partial", "dA_partial", "dD_partial", "ddelta_bias_partial", "checkpoints")),
    ]


def _kernel_dir() -> Path:
    return Path(os.environ.get("MAMBAFT_KERNEL_DIR") or Path.home() / ".cache" / "mambaft" / "kernels")


def library_path(arch: str) -> Path:
    """Where the library for this source and architecture (e.g. "sm_90") lives once built."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return _kernel_dir() / f"selective_scan-{digest}-{arch}.so"


def build(arch: str) -> Path:
    """Compile the library for `arch` (about 20 s); written under a temporary name first, so workers building
    at once never load a half-written file."""
    path = library_path(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    number = arch.removeprefix("sm_")
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        partial = Path(scratch) / path.name
        subprocess.run(
            [
                shutil.which("nvcc") or "nvcc",
                "-O3",
                "--use_fast_math",
                "-std=c++17",
                "-shared",
                "-Xcompiler",
                "-fPIC",
                f"-gencode=arch=compute_{number},code=sm_{number}",
                str(SOURCE),
                "-o",
                str(partial),
            ],
            check=True,
            capture_output=True,
        )
        partial.replace(path)
    return path


@functools.cache
def _library(device_index: int) -> ctypes.CDLL | None:
    """The library for this GPU, built first if need be; None (mamba-ssm's kernel then) without nvcc or when the
    build or the layout check fails, which is logged."""
    major, minor = torch.cuda.get_device_capability(device_index)
    arch = f"sm_{major}{minor}"
    path = library_path(arch)
    try:
        if not path.exists():
            if shutil.which("nvcc") is None:
                return None
            build(arch)
        return load(path)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
        detail = (getattr(error, "stderr", b"") or b"").decode()[-2000:]
        log.warning("own selective scan unavailable on %s, using mamba-ssm's: %s %s", arch, error, detail)
        return None


def _device_index(t: Tensor) -> int:
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def load(path: Path) -> ctypes.CDLL:
    """Open a built library, after checking that its ScanParams has _Params' layout (a field added on one side
    only would have the kernel read pointers from the wrong places)."""
    lib = ctypes.CDLL(str(path))
    for name in ("mambaft_scan_fwd", "mambaft_scan_bwd"):
        getattr(lib, name).argtypes = [ctypes.POINTER(_Params), ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_int
    offsets = (ctypes.c_int64 * 128)()
    count = lib.mambaft_scan_param_offsets(offsets, len(offsets))
    expected = [getattr(_Params, name).offset for name, _ in _Params._fields_] + [ctypes.sizeof(_Params)]
    if list(offsets[:count]) != expected:
        raise RuntimeError(f"{path}: ScanParams in selective_scan.cu and _Params in scan_cuda.py differ")
    return lib


def available(u: Tensor, A: Tensor, B: Tensor) -> bool:
    """Whether our kernel takes this scan: one group of B and C, and what `takes` asks."""
    return (B.dim() == 3 or B.shape[1] == 1) and takes(u, A.shape[-1])


def takes(u: Tensor, state_size: int) -> bool:
    """Whether our kernel takes a scan of u (one group of B and C): CUDA tensors, 16 states, fp32/fp16/bf16, and
    MAMBAFT_SCAN_KERNEL not set to "mamba-ssm" (which keeps mamba-ssm's kernel, e.g. to compare the two)."""
    return (
        os.environ.get("MAMBAFT_SCAN_KERNEL", "own") != "mamba-ssm"
        and u.is_cuda
        and state_size == STATE_SIZE
        and u.dtype in _DTYPES
        and _library(_device_index(u)) is not None
    )


def _rows(t: Tensor) -> Tensor:
    """t with its last dimension contiguous, as the kernel reads rows."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _states_by_time(t: Tensor) -> Tensor:
    """B or C as (b, n, l) with l contiguous, from (b, n, l) or mamba-ssm's (b, 1, n, l)."""
    return _rows(t[:, 0] if t.dim() == 4 else t)


def as_read(u, delta, A, B, C, D, z, delta_bias, reset=None) -> tuple[Tensor | None, ...]:
    """The inputs as the kernel reads them, in the same order: delta, B, C and z in u's dtype with rows contiguous,
    B and C (b, n, l), A, D and delta_bias fp32, reset uint8. A no-op on inputs already so."""
    dtype = u.dtype
    u, delta, z = (_rows(t.to(dtype)) for t in (u, delta, z))
    B, C = (_states_by_time(t.to(dtype)) for t in (B, C))
    A, D, delta_bias = (t.float().contiguous() for t in (A, D, delta_bias))
    reset = reset.to(torch.uint8).contiguous() if reset is not None else None
    return u, delta, A, B, C, D, z, delta_bias, reset


def _inputs(u, delta, A, B, C, D, z, delta_bias, reset) -> tuple[_Params, tuple[Tensor | None, ...]]:
    read = as_read(u, delta, A, B, C, D, z, delta_bias, reset)
    u, delta, A, B, C, D, z, delta_bias, reset = read
    batch, dim, seqlen = u.shape
    p = _Params(batch=batch, dim=dim, seqlen=seqlen, dtype=_DTYPES[u.dtype])
    for name, t in (("u", u), ("delta", delta), ("z", z)):
        _set_rows(p, name, t)
    for name, t in (("B", B), ("C", C)):
        _set_rows(p, name, t, second="n")
    p.A, p.D, p.delta_bias = A.data_ptr(), D.data_ptr(), delta_bias.data_ptr()
    p.reset = reset.data_ptr() if reset is not None else None
    # Returned so the caller holds every converted tensor until the kernel has been queued.
    return p, read


def _set_rows(p: _Params, name: str, t: Tensor, second: str = "d") -> None:
    """Point field `name` at t, (batch, dim or state, seqlen), with its two outer strides."""
    setattr(p, name, t.data_ptr())
    setattr(p, f"{name}_b", t.stride(0))
    setattr(p, f"{name}_{second}", t.stride(1))


def _call(fn_name: str, p: _Params, t: Tensor) -> None:
    lib = _library(_device_index(t))
    status = getattr(lib, fn_name)(ctypes.byref(p), ctypes.c_void_p(torch.cuda.current_stream(t.device).cuda_stream))
    if status != 0:
        raise RuntimeError(f"{fn_name} failed: CUDA error {status}")


def forward(u, delta, A, B, C, D, z, delta_bias, reset=None) -> tuple[Tensor, Tensor]:
    """(y, out_z), both (b, d, l) in u's dtype: y = <h, C> + D·u before the gate, out_z = y·silu(z)."""
    p, held = _inputs(u, delta, A, B, C, D, z, delta_bias, reset)
    y, out_z = torch.empty_like(held[0]), torch.empty_like(held[0])
    _set_rows(p, "y", y)
    _set_rows(p, "out_z", out_z)
    _call("mambaft_scan_fwd", p, u)
    return y, out_z


@dataclass(frozen=True)
class ScanGrads:
    du: Tensor
    ddelta: Tensor
    dA: Tensor | None
    dB: Tensor  # (b, n, l) in B's dtype
    dC: Tensor
    dD: Tensor | None
    ddelta_bias: Tensor | None
    dz: Tensor
    out_z: Tensor | None


def backward(
    u, delta, A, B, C, D, z, delta_bias, dout, y, *, reset=None, dz=None, want_A, want_D, want_delta_bias, out_z=False
) -> ScanGrads:
    """Gradients of the scan given dout, the gradient of out_z, and y as forward returned it. `dz`, if given, is
    written in place (mamba_inner's slice of dxz); `out_z` True recomputes it too."""
    p, held = _inputs(u, delta, A, B, C, D, z, delta_bias, reset)
    u_ = held[0]
    batch, dim, seqlen = u_.shape
    dout, y = _rows(dout.to(u_.dtype)), _rows(y)
    du, ddelta = torch.empty_like(u_), torch.empty_like(u_)
    dz = dz if dz is not None else torch.empty_like(u_)
    made_out_z = torch.empty_like(u_) if out_z else None
    for name, t in (("dout", dout), ("du", du), ("ddelta", ddelta), ("dz", dz), ("y", y)):
        _set_rows(p, name, t)
    if made_out_z is not None:
        _set_rows(p, "out_z", made_out_z)
    lib = _library(_device_index(u_))
    blocks = -(-dim // lib.mambaft_scan_block_channels())
    tiles = -(-seqlen // lib.mambaft_scan_tile())
    f32 = {"device": u_.device, "dtype": torch.float32}
    partial = torch.empty(blocks, batch, 2, STATE_SIZE, seqlen, **f32)
    checkpoints = torch.empty(batch, dim, tiles, STATE_SIZE, **f32)
    dA = torch.empty(batch, dim, STATE_SIZE, **f32) if want_A else None
    dD = torch.empty(batch, dim, **f32) if want_D else None
    dbias = torch.empty(batch, dim, **f32) if want_delta_bias else None
    p.dBC_partial, p.checkpoints = partial.data_ptr(), checkpoints.data_ptr()
    p.dA_partial = dA.data_ptr() if dA is not None else None
    p.dD_partial = dD.data_ptr() if dD is not None else None
    p.ddelta_bias_partial = dbias.data_ptr() if dbias is not None else None
    _call("mambaft_scan_bwd", p, u_)
    dBC = partial.sum(0)
    return ScanGrads(
        du=du,
        ddelta=ddelta,
        dA=dA.sum(0) if dA is not None else None,
        dB=dBC[:, 0].to(B.dtype),
        dC=dBC[:, 1].to(C.dtype),
        dD=dD.sum(0) if dD is not None else None,
        ddelta_bias=dbias.sum(0) if dbias is not None else None,
        dz=dz,
        out_z=made_out_z,
    )


class SelectiveScan(torch.autograd.Function):
    """out_z = selective_scan(u, delta, A, B, C, D, z, delta_bias) with resets, on our kernel.

    It keeps the inputs as the kernel reads them: under autocast a norm leaves delta, B and C in fp32 beside
    half u, and keeping those would hold twice the bytes of what the kernel uses."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, reset):
        read = as_read(u, delta, A, B, C, D, z, delta_bias, reset)
        y, out_z = forward(*read)
        ctx.save_for_backward(*read, y)
        ctx.originals = [(t.dtype, t.shape) for t in (u, delta, A, B, C, D, z, delta_bias)]
        return out_z

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, reset, y = ctx.saved_tensors
        need = ctx.needs_input_grad
        g = backward(
            u, delta, A, B, C, D, z, delta_bias, dout, y,
            reset=reset, want_A=need[2], want_D=need[5], want_delta_bias=need[7],
        )  # fmt: skip
        grads = (g.du, g.ddelta, g.dA, g.dB, g.dC, g.dD, g.dz, g.ddelta_bias)
        return (
            *(
                None if grad is None else grad.to(dtype).view(shape)
                for grad, (dtype, shape) in zip(grads, ctx.originals, strict=True)
            ),
            None,
        )


if __name__ == "__main__":  # the worker image builds the library for each GPU generation it may meet
    import sys

    for arch in sys.argv[1:]:
        print(build(f"sm_{arch}"))
