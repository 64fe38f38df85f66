"""The production trainer on the GPU: a real job's tokens/s and peak memory, CUDA graphs on and off.

Trains on the shipped demo data (bf16 LoRA on in_proj/x_proj/dt_proj/out_proj) with the byte tokenizer
of mamba-tiny, at two sizes: the tiny model itself and a random-init 130M shape (d_model 768 x 24).

    python3 bench/trainer_gpu.py            # throughput table
    python3 bench/trainer_gpu.py check      # per-step losses, CUDA graphs vs eager, same batches

tests/gpu/test_cuda_graph_gpu.py runs the same check on the tiny models.
"""

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoTokenizer, MambaConfig, MambaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from worker.engine.spec import LoraSpec, Progress, TrainHooks, TrainSpec  # noqa: E402
from worker.engine.tiny_model import create_tiny_model  # noqa: E402
from worker.engine.trainer import train  # noqa: E402


def make_130m(folder: Path, tiny: Path) -> Path:
    """A 130M-shape Mamba with the tiny model's byte tokenizer (its vocab, so the demo data fits)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    vocab = MambaConfig.from_pretrained(tiny).vocab_size
    torch.manual_seed(0)
    model = MambaForCausalLM(
        MambaConfig(
            vocab_size=vocab,
            hidden_size=768,
            num_hidden_layers=24,
            state_size=16,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def step_losses(spec: TrainSpec) -> list[float]:
    losses: list[float] = []

    def record(progress: Progress) -> None:
        losses.append(progress.loss)

    train(spec, TrainHooks(on_progress=record))
    return losses


def run(spec: TrainSpec) -> dict:
    result = train(spec)
    m = result.metrics
    return dict(
        model=Path(spec.model).name,
        cuda_graphs=spec.cuda_graphs,
        recompute=spec.activation_recompute,
        batch=spec.batch_size,
        seq=spec.max_seq_len,
        steps=m["steps"],
        tokens_per_s=round(m["tokens_per_second"]),
        peak_GiB=round(m["peak_memory_bytes"] / 2**30, 2),
        base_validation_loss=round(m["base_validation_loss"], 4),
        validation_loss=round(m["validation_loss"], 4),
    )


def gap(a: list[float], b: list[float]) -> float:
    """The largest per-step difference of two runs' losses."""
    return round(max(abs(x - y) for x, y in zip(a, b, strict=True)), 5)


def base_spec(
    model: Path,
    out: Path,
    batch: int,
    seq: int,
    epochs: int,
    targets: tuple[str, ...] = ("in_proj", "x_proj", "dt_proj", "out_proj"),
) -> TrainSpec:
    return TrainSpec(
        model=str(model),
        train_path=ROOT / "demo/train.jsonl",
        validation_path=ROOT / "demo/valid.jsonl",
        output_dir=out,
        precision="bf16",
        batch_size=batch,
        max_seq_len=seq,
        learning_rate=2e-3,
        lora=LoraSpec(r=8, alpha=16, target_modules=targets),
        checkpoint_every=0,
        n_epochs=epochs,
    )


if __name__ == "__main__":
    print("torch", torch.__version__, torch.cuda.get_device_name())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = create_tiny_model(tmp / "mamba-tiny", "mamba")
        if sys.argv[1:] == ["check"]:
            spec = base_spec(make_130m(tmp / "mamba-130m-shape", tiny), tmp / "out", 8, 1024, 1)
            eager, again = step_losses(replace(spec, cuda_graphs=False)), step_losses(replace(spec, cuda_graphs=False))
            graphed = step_losses(spec)

            # Eager vs eager shows the run-to-run noise of the GPU kernels (atomic adds in backward).
            print(
                json.dumps(
                    dict(
                        eager=[round(x, 4) for x in eager],
                        graphed=[round(x, 4) for x in graphed],
                        eager_vs_eager=gap(eager, again),
                        graphed_vs_eager=gap(graphed, eager),
                    )
                )
            )
            sys.exit()
        # (model, batch, seq, epochs): enough steps that capture and warm-up are a small share.
        shapes = [(tiny, 8, 256, 1), (make_130m(tmp / "mamba-130m-shape", tiny), 8, 1024, 4)]
        for model, batch, seq, epochs in shapes:
            base = base_spec(model, tmp / "out", batch, seq, epochs)
            for spec in (replace(base, cuda_graphs=False), base, replace(base, activation_recompute=True)):
                print(json.dumps(run(spec)), flush=True)
