"""Tokens/s, peak memory and a GPU-time split of one LoRA step: our engine vs stock, in one run.

GPU (same shapes and settings as ../shared/device/stock_profile.py: batch 8 x 1024, LoRA r=8,
frozen weights bf16, trainable fp32, autocast bf16, fused AdamW):
    python3 bench/step.py gpu [mamba|mamba2] [engine,engine...]   (ours, ours_graph, ours_lean, ours_lean_graph)
CPU (the embedded default: tiny model shape d_model 128 x 4 layers, batch 4 x 256):
    python3 bench/step.py cpu
Stock on the CPU is transformers' own pure-torch path (a Python loop over tokens).
"""

import collections
import json
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch.profiler import ProfilerActivity, profile
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from worker.engine.lora_fold import attach_lora  # noqa: E402
from worker.engine.loss import next_token_loss  # noqa: E402
from worker.engine.mamba_forward import install_forwards, set_activation_recompute  # noqa: E402
from worker.engine.spec import LoraSpec  # noqa: E402

OUR_TARGETS = {"mamba": ("in_proj", "x_proj", "dt_proj", "out_proj"), "mamba2": ("in_proj", "out_proj")}
# What stock peft accepts: it refuses out_proj on both families.
STOCK_TARGETS = {"mamba": ("in_proj", "x_proj", "dt_proj"), "mamba2": ("in_proj",)}


def make(family: str, d: int, layers: int, vocab: int) -> torch.nn.Module:
    if family == "mamba2":
        return Mamba2ForCausalLM(Mamba2Config(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, state_size=128,
                                              expand=2, head_dim=64, num_heads=2 * d // 64, n_groups=1, chunk_size=256))
    return MambaForCausalLM(MambaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, state_size=16,
                                        expand=2, use_mambapy=False))


def build(engine: str, family: str, d: int, layers: int, vocab: int, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: a 1.4B random init on the host takes minutes
        model = make(family, d, layers, vocab)
    if engine.startswith("ours"):
        model = attach_lora(install_forwards(model), LoraSpec(r=8, alpha=16, target_modules=OUR_TARGETS[family]))
        set_activation_recompute(model, "lean" in engine)
    else:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(STOCK_TARGETS[family])))
    model = model.to(device)
    if device == "cuda":
        for p in model.parameters():
            p.data = p.data.float() if p.requires_grad else p.data.to(torch.bfloat16)
    return model


def category(kernel: str) -> str:
    k = kernel.lower()
    if any(s in k for s in ("selective_scan", "chunk", "_bmm", "state_passing")):
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


def measure(engine: str, family: str, d: int, layers: int, batch: int, seq: int, device: str, steps: int) -> dict:
    vocab = 50280 if device == "cuda" else 264
    model = build(engine, family, d, layers, vocab, device)
    graphed = engine.endswith("graph")
    # "lean" engines recompute each layer in backward (memory-lean mode).
    params = [p for p in model.parameters() if p.requires_grad]
    if graphed:  # the learning rate lives on the GPU so a captured step can still follow a schedule
        optimizer = torch.optim.AdamW(params, lr=torch.tensor(1e-5, device=device), fused=True, capturable=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda")
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    targets = ids.roll(-1, dims=1)
    targets[:, -1] = -100  # the same 1023 scored positions per row as the model's own shifted loss
    model.train()

    def eager_step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda", cache_enabled=not graphed):
            if engine == "stock":
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            else:
                loss = next_token_loss(model, ids, targets)
        loss.backward()
        optimizer.step()
        if not graphed:
            optimizer.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step = capture(eager_step, optimizer) if graphed else eager_step
    warmup = 2 if device == "cuda" else 1
    for i in range(steps + warmup):
        if i == warmup:
            sync()
            start = time.perf_counter()
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    result = dict(engine=engine, family=family, d=d, layers=layers, batch=batch, seq=seq,
                  tokens_per_s=round(batch * seq / seconds), step_ms=round(seconds * 1e3, 1))
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


def compare(shapes: list[tuple[str, int, int, int, int]], device: str, steps: int, engines: list[str]) -> None:
    for family, d, layers, batch, seq in shapes:
        stock = measure("stock", family, d, layers, batch, seq, device, steps)
        print(json.dumps(stock), flush=True)
        for engine in engines:
            ours = measure(engine, family, d, layers, batch, seq, device, steps)
            print(json.dumps(ours), flush=True)
            print(json.dumps(dict(family=family, d=d, layers=layers, engine=engine,
                                  speedup=round(ours["tokens_per_s"] / stock["tokens_per_s"], 2))), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    if mode == "gpu":
        family = sys.argv[2] if len(sys.argv) > 2 else "mamba"
        print("torch", torch.__version__, torch.cuda.get_device_name())
        engines = sys.argv[3].split(",") if len(sys.argv) > 3 else ["ours", "ours_graph", "ours_lean", "ours_lean_graph"]
        compare([(family, 2048, 48, 8, 1024), (family, 768, 24, 8, 1024)], "cuda", steps=4, engines=engines)
    else:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        compare([("mamba", 128, 4, 4, 256)], "cpu", steps=2, engines=["ours"])
