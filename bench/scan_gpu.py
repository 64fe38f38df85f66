"""Our selective scan (worker/engine/scan_cuda.py) against mamba-ssm 2.3's `selective_scan_fn`, forward and
forward + backward, at one Mamba layer's shape (default: Mamba 1.4B, 8 x 1024 tokens, d_inner 4096, state 16, bf16).

Both run through autograd as a training step calls them, A, D and Δ bias frozen as under LoRA (`--train-adt`
trains them). Each engine warms up, then they alternate in windows of `--reps` calls; the median window is
reported, and the ratio mamba-ssm / ours of the medians. The same call prints each gradient's cosine between the
two kernels.

    python3 bench/scan_gpu.py [--batch 8 --dim 4096 --length 1024 --windows 5 --reps 10]
"""

import argparse
import json
import statistics

import torch
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

from worker.engine import scan_cuda

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def inputs(batch: int, dim: int, length: int, dtype: torch.dtype, train_adt: bool) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape, scale=1.0, dt=dtype, grad=True):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dt).requires_grad_(grad)

    return {
        "u": rand(batch, dim, length),
        "delta": (rand(batch, dim, length, scale=0.2, grad=False) - 2).requires_grad_(),
        "A": (-torch.arange(1, 17, device="cuda", dtype=torch.float32).repeat(dim, 1)).requires_grad_(train_adt),
        "B": rand(batch, 16, length),
        "C": rand(batch, 16, length),
        "D": rand(dim, dt=torch.float32, grad=train_adt),
        "z": rand(batch, dim, length),
        "delta_bias": rand(dim, scale=0.5, dt=torch.float32, grad=train_adt),
    }


def ours(*x):
    return scan_cuda.SelectiveScan.apply(*x, None)


def theirs(*x):
    return selective_scan_fn(*x, delta_softplus=True)


def run(fn, x: dict, dout: torch.Tensor, backward: bool) -> None:
    out = fn(*(x[k] for k in NAMES))
    if backward:
        out.backward(dout)


def window(fn, x: dict, dout: torch.Tensor, backward: bool, reps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        run(fn, x, dout, backward)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def cosines(x: dict, dout: torch.Tensor) -> dict:
    grads = []
    for fn in (ours, theirs):
        for v in x.values():
            v.grad = None
        run(fn, x, dout, backward=True)
        grads.append({k: v.grad.clone() for k, v in x.items() if v.grad is not None})
    ours_g, theirs_g = grads
    return {k: round(_cosine(ours_g[k], theirs_g[k]), 6) for k in ours_g}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--train-adt", action="store_true", help="A, D and Δ bias train (full fine-tuning)")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    x = inputs(args.batch, args.dim, args.length, dtype, args.train_adt)
    dout = torch.randn(args.batch, args.dim, args.length, device="cuda").to(dtype)
    print(json.dumps({"gradient_cosine_ours_vs_mamba_ssm": cosines(x, dout)}), flush=True)
    for backward in (False, True):
        times = {"ours": [], "mamba_ssm": []}
        for fn in (ours, theirs):
            for _ in range(3):
                run(fn, x, dout, backward)
        for _ in range(args.windows):
            for name, fn in (("ours", ours), ("mamba_ssm", theirs)):
                times[name].append(window(fn, x, dout, backward, args.reps))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            json.dumps(
                {
                    "pass": "forward+backward" if backward else "forward",
                    "shape": [args.batch, args.dim, args.length, 16],
                    "dtype": args.dtype,
                    "train_A_D_bias": args.train_adt,
                    "ms_median": {k: round(v, 3) for k, v in med.items()},
                    "ms_range": {k: [round(min(v), 3), round(max(v), 3)] for k, v in times.items()},
                    "speedup_vs_mamba_ssm": round(med["mamba_ssm"] / med["ours"], 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
