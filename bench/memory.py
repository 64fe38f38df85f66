"""Calibrate worker/engine/memory.py on the CPU: a real job's peak RSS against the estimate.

    python bench/memory.py [model folder ...]

Each row trains one step of a tiny model (one batch of batch x seq_len tokens of text, LoRA r=8 on its
family's default targets) in a fresh process and reports how far its resident memory grew, from just
before `train()` to its peak, next to memory.py's estimate without SAFETY. The growth is what a job adds
to a worker, so it is what the estimate has to cover. A model folder whose config.json says
"attn_implementation": "eager" measures eager attention (every head's l x l scores).
"""

import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = [  # (precision, activation_recompute, batch, seq_len)
    ("fp32", False, 8, 256),
    ("fp32", False, 4, 1024),
    ("fp32", False, 2, 2048),
    ("fp32", False, 1, 4096),
    ("bf16", False, 4, 1024),
    ("fp32", True, 4, 1024),
    ("bf16", True, 2, 2048),
]


def one_step(model: str, precision: str, recompute: bool, batch: int, seq_len: int) -> dict:
    """In this process: train one step and return the measured growth and the estimate."""
    import torch

    from app.jobs.contract import LoraSpec
    from worker.engine import memory
    from worker.engine.loading import load_base
    from worker.engine.lora_fold import attach_lora
    from worker.engine.precision import PrecisionPolicy
    from worker.engine.spec import TrainSpec
    from worker.engine.trainer import train

    torch.set_num_threads(1)
    words = ["the", "cat", "paints", "a", "red", "box", "river", "team", "builds", "green"]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        line_chars = 200  # + EOS: one example is 201 tokens of the byte tokenizer
        examples = batch * seq_len // (line_chars + 1)
        text = (" ".join(rng.choice(words) for _ in range(line_chars)) for _ in range(examples))
        data.write_text("".join(json.dumps({"text": t[:line_chars]}) + "\n" for t in text))
        spec = TrainSpec(
            model=model,
            train_path=data,
            output_dir=Path(tmp) / "out",
            precision=precision,
            lora=LoraSpec.for_family(json.loads((Path(model) / "config.json").read_text())["model_type"]),
            batch_size=batch,
            max_seq_len=seq_len,
            device="cpu",
            checkpoint_every=0,
            activation_recompute=recompute,
            memory_budget_bytes=1 << 50,
        )
        before = _rss()
        train(spec)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # The trainer's own setup, to size the model it trained.
    model_, _, family = load_base(model, device=torch.device("cpu"))
    model_ = attach_lora(model_, spec.lora)
    PrecisionPolicy(precision, torch.device("cpu")).prepare(model_)
    shape = memory.StepShape(batch, seq_len, precision, recompute)
    estimate = memory.step_bytes(memory.ModelSize.of(model_, family=family, fused=False), shape) / memory.SAFETY
    return {"grown": peak - before, "estimate": round(estimate)}


def _rss() -> int:
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        model, precision, recompute, batch, seq_len = sys.argv[2:]
        print(json.dumps(one_step(model, precision, recompute == "True", int(batch), int(seq_len))))
        return
    models = sys.argv[1:]
    print("| model | precision | recompute | batch x seq_len | measured MiB | estimate MiB | estimate / measured |")
    print("|---|---|---|---|---|---|---|")
    for model in models:
        for precision, recompute, batch, seq_len in SHAPES:
            out = (
                subprocess.run(
                    [sys.executable, __file__, "--one", model, precision, str(recompute), str(batch), str(seq_len)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            row = json.loads(out)
            print(
                f"| {Path(model).name} | {precision} | {recompute} | {batch} x {seq_len} | {row['grown'] / 2**20:,.0f} "
                f"| {row['estimate'] / 2**20:,.0f} | {row['estimate'] / row['grown']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
