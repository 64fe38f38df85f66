"""Tokens/s, peak memory and a GPU-time split of one LoRA step: our engine vs stock, in one run.

GPU (same shapes and settings as ../shared/device/stock_profile.py: batch 8 x 1024, LoRA r=8,
frozen weights in the half precision, trainable fp32, autocast, fused AdamW):
    python3 bench/step.py gpu [family] [engine,engine...] [--precision bf16|fp16|fp32] [--shapes 1.4b,130m]
        engines: ours, ours_graph, ours_lean, ours_lean_graph. fp16 adds dynamic loss scaling
        (GradScaler, as the trainer does); fp32 keeps every weight fp32 and runs no autocast.
        --documents N: each row packs N documents of equal length, kept apart as a job's packed examples are
        (stock runs the same shapes as one document a row: it cannot keep them apart).
        --windows N: each engine times N windows of 4 steps after its warm-up; the median is reported, with
        the spread (slowest, fastest window).
        family: mamba, mamba2, or any other of app/families at the shape `1b` (`--shapes 1b`): the ~1B
        Bamba-style hybrid of the stock baseline in ../shared/device/probe_hybrids.py. Ours adapts the
        family's default targets (experts included); stock every module target that peft accepts.
The largest batch x 1024 tokens one step fits in the GPU, per engine (stock included):
    python3 bench/step.py capacity [mamba|mamba2] [engine,engine...] [--precision ...]
CPU (the embedded default: tiny model shape d_model 128 x 4 layers, batch 4 x 256, fp32):
    taskset -c 0,1 python3 bench/step.py cpu [mamba|mamba2] [--runs 5] [--steps 3] [--threads N]
    Stock on the CPU is transformers' own pure-torch path (a Python loop over tokens). Both models are
    built and warmed up first; then each run times `steps` steps of stock and then of ours, so load from
    elsewhere falls on both alike. It prints every run and the median with its spread; `cpu_s` is the
    process's CPU time per step, which other load on the machine inflates less than the wall time. Both run
    inside worker/engine/heap.py's `retained_heap()`, as a CPU job trains (stock gains from it too).
"""

import argparse
import collections
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch.profiler import ProfilerActivity, profile
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.families import FAMILIES
from worker.engine.families import family_engine
from worker.engine.heap import retained_heap
from worker.engine.lora_fold import attach_lora
from worker.engine.loss import next_token_loss
from worker.engine.mamba_forward import install_forwards, set_activation_recompute
from worker.engine.spec import LoraSpec
from worker.engine.tiny_model import family_config, tiny_shape

# The dtype of frozen weights and of autocast; fp32 runs without autocast.
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
SHAPES = {"1.4b": (2048, 48), "130m": (768, 24), "1b": (2048, 24)}
# The other families at the shape `1b`, as the stock baseline's Bamba: 20 Mamba-2 mixers of 64 heads x 64 with
# a state of 128 (Mamba-1 mixers: 16), 4 attention layers of 16 heads (8 for keys and values), MLPs of 5632.
# Nemotron-H's blocks hold one kind each: 48 of them (20 mixers, 4 attention, 24 MLPs). Jamba's experts (4,
# 2 per token) are half as wide, on every other layer; Falcon-H1 has attention and a mixer in every layer.
ATTENTION = {"attention_heads": 16, "kv_heads": 8, "mlp_size": 5632}
HYBRIDS = {
    "bamba": (24, {**ATTENTION, "layer_pattern": "MMMMM*", "mamba_head_dim": 64}),
    "nemotron_h": (48, {**ATTENTION, "layer_pattern": "M-M-M-M-M-*-", "head_dim": 128, "mamba_head_dim": 64}),
    "granitemoehybrid": (24, {**ATTENTION, "layer_pattern": "MMMMMA", "experts": 0, "mamba_head_dim": 64}),
    "falcon_h1": (24, {**ATTENTION, "ssm_heads": 64}),
    "zamba2": (24, {"attention_heads": 16, "kv_heads": 16, "mlp_size": 5632, "layer_pattern": "MMMMMH"}),
    "jamba": (24, {**ATTENTION, "mlp_size": 2816, "attention_period": 6, "attention_offset": 5}),
    "falcon_mamba": (24, {}),
}
MAMBA1_MIXERS = ("falcon_mamba", "jamba")


def make(family: str, d: int, layers: int, vocab: int) -> torch.nn.Module:
    if family in HYBRIDS:
        n_layer, options = HYBRIDS[family]
        d_state = 16 if family in MAMBA1_MIXERS else 128
        shape = FAMILIES[family].shape(d_model=d, n_layer=n_layer, d_state=d_state, variant=None, options=options)
        return family_engine(family).causal_lm(family_config(family_engine(family), shape, vocab, eos_id=0))
    if family == "mamba2":
        return Mamba2ForCausalLM(
            Mamba2Config(
                vocab_size=vocab,
                hidden_size=d,
                num_hidden_layers=layers,
                state_size=128,
                expand=2,
                head_dim=64,
                num_heads=2 * d // 64,
                n_groups=1,
                chunk_size=256,
            )
        )
    return MambaForCausalLM(
        MambaConfig(
            vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, state_size=16, expand=2, use_mambapy=False
        )
    )


def build(engine: str, family: str, d: int, layers: int, vocab: int, device: str, precision: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: a 1.4B random init on the host takes minutes
        model = make(family, d, layers, vocab)
    if engine.startswith("ours"):
        targets = FAMILIES[family].default_targets
        model = attach_lora(install_forwards(model), LoraSpec(r=8, alpha=16, target_modules=targets))
        set_activation_recompute(model, "lean" in engine)
    else:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=stock_targets(family)))
    model = model.to(device)
    if device == "cuda":
        frozen = HALF[precision] or torch.float32
        for p in model.parameters():
            p.data = p.data.float() if p.requires_grad else p.data.to(frozen)
    return model


def stock_targets(family: str) -> list[str]:
    """The family's default module targets that peft accepts, each tried alone on the family's tiny model
    (peft refuses out_proj of Mamba's and Mamba-2's mixers, and target_modules cannot reach 3-D expert weights)."""
    family_of = FAMILIES[family]
    config = family_config(family_engine(family), tiny_shape(family), 264, eos_id=0)
    accepted = []
    for target in (t for t in family_of.default_targets if t not in family_of.parameter_targets):
        try:
            get_peft_model(family_engine(family).causal_lm(config), LoraConfig(r=8, target_modules=[target]))
            accepted.append(target)
        except ValueError as error:
            print(json.dumps(dict(family=family, stock_refuses=target, error=str(error)[:160])), flush=True)
    return accepted


def category(kernel: str) -> str:
    k = kernel.lower()
    # mamba-ssm's scans, Mamba-2's SSD kernels, and ours (worker/engine/csrc/selective_scan.cu)
    if any(s in k for s in ("selective_scan", "chunk", "_bmm", "state_passing", "scan_fwd_kernel", "scan_bwd_kernel")):
        return "scan"
    if any(s in k for s in ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul", "splitk")):
        return "gemm"
    return "glue"


def capture(eager_step, optimizer) -> "callable":
    """Forward, backward and optimizer step as one CUDA graph: no Python or launch cost per kernel."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            eager_step()
            optimizer.zero_grad(set_to_none=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        eager_step()
    return graph.replay


def make_step(
    engine: str,
    model: torch.nn.Module,
    precision: str,
    batch: int,
    seq: int,
    device: str,
    graphed: bool,
    documents: int = 1,
) -> "callable":
    """One training step of `model` on a fixed random batch, eager or captured as a CUDA graph; `documents`
    per row, kept apart (ours), as data.py packs a job's examples."""
    params = [p for p in model.parameters() if p.requires_grad]
    if graphed:  # the learning rate lives on the GPU so a captured step can still follow a schedule
        optimizer = torch.optim.AdamW(params, lr=torch.tensor(1e-5, device=device), fused=True, capturable=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda")
    # Disabled (bf16, fp32) it passes everything through; under fp16 it scales the loss and skips
    # overflowing steps on the GPU, with no host sync, so the captured step keeps it.
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    targets = ids.roll(-1, dims=1)
    targets[:, -1] = -100  # the same 1023 scored positions per row as the model's own shifted loss
    packed = None
    if documents > 1:
        packed = (torch.arange(seq, device=device) * documents // seq).int().expand(batch, seq).contiguous()
    model.train()
    half = HALF[precision] if device == "cuda" else None

    def eager_step() -> None:
        with torch.autocast(device, dtype=half or torch.bfloat16, enabled=half is not None, cache_enabled=not graphed):
            if engine == "stock":
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            else:
                loss = next_token_loss(model, ids, targets, packed)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if not graphed:
            optimizer.zero_grad(set_to_none=True)

    return capture(eager_step, optimizer) if graphed else eager_step


def timed(step: "callable", steps: int, warmup: int, sync: "callable", windows: int = 1) -> list[float]:
    """Seconds per step of each of `windows` runs of `steps` steps, after `warmup` steps."""
    for _ in range(warmup):
        step()
    sync()
    seconds = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        seconds.append((time.perf_counter() - start) / steps)
    return seconds


def measure(
    engine: str,
    family: str,
    d: int,
    layers: int,
    batch: int,
    seq: int,
    device: str,
    steps: int,
    precision: str = "bf16",
    vocab: int | None = None,
    documents: int = 1,
    windows: int = 1,
) -> dict:
    vocab = vocab or (50280 if device == "cuda" else 264)
    model = build(engine, family, d, layers, vocab, device, precision)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step = make_step(engine, model, precision, batch, seq, device, engine.endswith("graph"), documents)
    per_window = timed(step, steps, warmup=2 if device == "cuda" else 1, sync=sync, windows=windows)
    seconds = statistics.median(per_window)
    result = dict(
        engine=engine,
        family=family,
        d=d,
        layers=layers,
        batch=batch,
        seq=seq,
        documents=documents,
        precision=precision,
        tokens_per_s=round(batch * seq / seconds),
        tokens_per_s_spread=[round(batch * seq / s) for s in (max(per_window), min(per_window))],
        step_ms=round(seconds * 1e3, 1),
    )
    if device == "cuda":
        result["peak_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            sync()
        split = collections.Counter()
        kernels = collections.Counter()
        for event in prof.key_averages():
            split[category(event.key)] += event.device_time_total
            kernels[event.key[:80]] += event.device_time_total
        busy = sum(split.values())
        result["top_kernels_ms"] = {k: round(v / 1e3, 1) for k, v in kernels.most_common(12)}
        result["gpu_busy_ms"] = round(busy / 1e3, 1)
        result["gpu_idle_ms"] = round(max(0.0, seconds * 1e3 - busy / 1e3), 1)  # host-bound share of the step
        result["share"] = {k: round(v / busy, 3) for k, v in split.most_common()}
    return result


def peak_of_step(engine: str, model: torch.nn.Module, precision: str, batch: int, seq: int) -> tuple[int, float]:
    """Peak bytes and seconds of one eager step at `batch` (after one warm-up step)."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step = make_step(engine, model, precision, batch, seq, "cuda", graphed=False)
    (seconds,) = timed(step, 1, warmup=1, sync=torch.cuda.synchronize)
    return torch.cuda.max_memory_allocated(), seconds


def capacity(engine: str, family: str, d: int, layers: int, seq: int, precision: str) -> dict:
    """The largest batch of `seq` tokens one step fits in. Peak memory is close to affine in the batch
    (weights + per-row activations), but small batches overstate the per-row cost, so the line is refit
    through the last two measured batches until a prediction fits; a batch that does not fit steps down."""
    model = build(engine, family, d, layers, 50280, "cuda", precision)
    card = torch.cuda.mem_get_info()[1] * 0.97  # the whole card, less a margin for the allocator
    points = [(b, *peak_of_step(engine, model, precision, b, seq)) for b in (2, 4)]
    best = points[-1]
    for _ in range(4):
        (b1, p1, _), (b2, p2, _) = points[-2:]
        per_row = (p2 - p1) / (b2 - b1)
        batch = int(b2 + (card - p2) // per_row)
        if batch <= best[0]:
            break
        try:
            points.append((batch, *peak_of_step(engine, model, precision, batch, seq)))
            best = points[-1]
        except torch.OutOfMemoryError:  # the same line, a smaller target
            card *= 0.97
    batch, peak, seconds = best
    result = dict(
        engine=engine,
        family=family,
        d=d,
        layers=layers,
        precision=precision,
        seq=seq,
        max_batch=batch,
        max_tokens=batch * seq,
        peak_GiB=round(peak / 2**30, 2),
        tokens_per_s=round(batch * seq / seconds),
        tried=[b for b, _, _ in points],
    )
    del model
    return result


def cpu_compare(family: str, runs: int, steps: int) -> dict:
    """Seconds per step of stock and ours on the tiny shape, runs interleaved; the median run and the spread."""
    d, layers, batch, seq, vocab = 128, 4, 4, 256, 264
    engines = ("stock", "ours")
    step_of = {}
    for engine in engines:
        step_of[engine] = make_step(
            engine, build(engine, family, d, layers, vocab, "cpu", "fp32"), "fp32", batch, seq, "cpu", False
        )
        step_of[engine]()  # warm-up: first-call allocations and lazy initialisation
    seconds = {engine: [] for engine in engines}
    cpu = {engine: [] for engine in engines}
    for run in range(runs):
        for engine in engines:
            wall, used = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step_of[engine]()
            seconds[engine].append((time.perf_counter() - wall) / steps)
            cpu[engine].append((time.process_time() - used) / steps)
        ratio = seconds["stock"][-1] / seconds["ours"][-1]
        print(
            json.dumps(dict(run=run, **{f"{e}_s": round(seconds[e][-1], 3) for e in engines}, speedup=round(ratio, 1))),
            flush=True,
        )
    ratios = [s / o for s, o in zip(seconds["stock"], seconds["ours"], strict=True)]
    shape = dict(family=family, d=d, layers=layers, batch=batch, seq=seq, precision="fp32")
    result = dict(shape, threads=torch.get_num_threads(), runs=runs, steps=steps)
    for engine in engines:
        result[engine] = dict(
            step_s=round(statistics.median(seconds[engine]), 3),
            spread_s=[round(min(seconds[engine]), 3), round(max(seconds[engine]), 3)],
            cpu_s=round(statistics.median(cpu[engine]), 3),
            tokens_per_s=round(batch * seq / statistics.median(seconds[engine])),
        )
    result["speedup"] = round(statistics.median(ratios), 1)
    result["speedup_spread"] = [round(min(ratios), 1), round(max(ratios), 1)]
    return result


def compare(
    shapes: list[tuple[str, int, int, int, int]],
    device: str,
    steps: int,
    engines: list[str],
    precision: str,
    documents: int = 1,
    windows: int = 1,
) -> None:
    for family, d, layers, batch, seq in shapes:
        results = {}
        for engine in ["stock", *engines]:
            try:
                results[engine] = measure(
                    engine,
                    family,
                    d,
                    layers,
                    batch,
                    seq,
                    device,
                    steps,
                    precision,
                    documents=1 if engine == "stock" else documents,
                    windows=windows,
                )
            except Exception as error:  # one engine failing (an OOM, stock's own defects) must not lose the others'
                print(json.dumps(dict(family=family, d=d, engine=engine, precision=precision, error=repr(error))))
                continue
            finally:
                gc.collect()
            print(json.dumps(results[engine]), flush=True)
            if engine == "stock" or "stock" not in results:
                continue
            ours, stock = results[engine], results["stock"]
            print(
                json.dumps(
                    dict(
                        family=family,
                        d=d,
                        layers=layers,
                        engine=engine,
                        precision=precision,
                        documents=documents,
                        speedup=round(ours["tokens_per_s"] / stock["tokens_per_s"], 2),
                    )
                ),
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["gpu", "capacity", "cpu"], nargs="?", default="cpu")
    parser.add_argument("family", choices=list(FAMILIES), nargs="?", default="mamba")
    parser.add_argument("engines", nargs="?", default="ours,ours_graph,ours_lean,ours_lean_graph")
    parser.add_argument("--precision", choices=list(HALF), default="bf16")
    parser.add_argument("--documents", type=int, default=1, help="gpu: documents packed in each row (ours)")
    parser.add_argument("--shapes", default="1.4b,130m", help=f"comma-separated, of {list(SHAPES)}")
    parser.add_argument("--runs", type=int, default=5, help="cpu: timed runs of each engine, interleaved")
    parser.add_argument("--steps", type=int, default=3, help="cpu: steps per timed run")
    parser.add_argument("--windows", type=int, default=5, help="gpu: timed windows of 4 steps; the median is reported")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="cpu: torch threads")
    args = parser.parse_args()
    engines = args.engines.split(",")
    if args.mode == "cpu":
        torch.set_num_threads(args.threads)
        with retained_heap():
            print(json.dumps(cpu_compare(args.family, args.runs, args.steps)), flush=True)
        return
    print("torch", torch.__version__, torch.cuda.get_device_name(), args.precision, flush=True)
    shapes = [SHAPES[name] for name in args.shapes.split(",")]
    if args.mode == "gpu":
        shapes = [(args.family, d, layers, 8, 1024) for d, layers in shapes]
        compare(shapes, "cuda", 4, engines, args.precision, args.documents, args.windows)
        return
    for d, layers in shapes:
        for engine in engines:
            print(json.dumps(capacity(engine, args.family, d, layers, 1024, args.precision)), flush=True)
            gc.collect()


if __name__ == "__main__":
    main()
