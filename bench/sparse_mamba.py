"""Sparse Mamba: Mamba vs SC-Mamba vs SO-Mamba, and Mamba-2 vs ST-Mamba2, trained from scratch.

    python3 bench/sparse_mamba.py --device cpu --seeds 3 --steps 60 --d-model 64 --n-layer 2 --d-state 8

Every model is built by the service's own path (worker/engine/model_builder.py) and trained by the
production trainer (full fine-tuning, fp32 on CPU / bf16 on CUDA) on the same token stream of the
stdlib corpus (worker/engine/stdlib_corpus.py, split by file): same size, tokens and hyperparameters,
seeds 0..S-1 (the seed sets both the initialization and the batch order, so seed s of every variant
sees the same batches). Per variant: validation perplexity, training tokens/s, training time, wall
time of the whole run (load, training, both validation passes) and parameters, as mean and 95%
t-interval; and per claim the paired relative difference against the stock model of the same seed.

On CUDA stock Mamba runs mamba-ssm's fused kernel while SC/SO run our pure-torch diagonalized scan (the
kernel takes one real diagonal A per channel), eager (their step cannot be captured as a CUDA graph).
"Mamba (torch scan)" is stock Mamba forced onto the same pure-torch scan, eager too, so its time against
SC/SO isolates what the structure costs from what the kernel and the graph save.
"""

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from worker.engine import kernels
from worker.engine.model_builder import Architecture, create_model_folder
from worker.engine.spec import TrainSpec
from worker.engine.stdlib_corpus import build_corpus
from worker.engine.trainer import train

# (name, family, variant field, variant); the first of each family is its baseline.
VARIANTS = [
    ("Mamba", "mamba", "ssm_structure", "diagonal"),
    (TORCH_SCAN := "Mamba (torch scan)", "mamba", "ssm_structure", "diagonal"),
    ("SC-Mamba", "mamba", "ssm_structure", "controllable"),
    ("SO-Mamba", "mamba", "ssm_structure", "observable"),
    ("Mamba-2", "mamba2", "a_constraint", "none"),
    ("ST-Mamba2", "mamba2", "a_constraint", "stable"),
]
BASELINE = {"mamba": "Mamba", "mamba2": "Mamba-2"}
METRICS = ("validation_perplexity", "tokens_per_second", "train_seconds", "wall_seconds", "parameters")


def take_tokens(source: Path, target: Path, chars: int) -> None:
    """The first `chars` characters of a corpus split, file by file (the byte tokenizer: ~1 token each)."""
    lines = []
    for line in source.read_text().splitlines():
        text = json.loads(line)["text"][:chars]
        lines.append(json.dumps({"text": text}))
        chars -= len(text)
        if chars <= 0:
            break
    target.write_text("\n".join(lines) + "\n")


def run_one(
    args: argparse.Namespace,
    variant: tuple[str, str, str, str],
    seed: int,
    data: dict[str, Path],
    work: Path,
    split: str = "train",
) -> dict[str, float]:
    name, family, field, value = variant
    arch = Architecture(
        id=name,
        family=family,
        d_model=args.d_model,
        n_layer=args.n_layer,
        d_state=args.d_state,
        seed=seed,
        **{field: value},
    )
    folder = work / f"{name.replace(' ', '_')}-{seed}-{split}"
    parameters = create_model_folder(arch, folder / "model")
    # Only the mixer's scan falls back to torch: the rest of the step is the same as SC/SO's.
    torch_scan = mock.patch.object(kernels, "fused_kernels_available", lambda: False)
    start = time.perf_counter()
    with torch_scan if name == TORCH_SCAN else nullcontext():
        result = train(
            TrainSpec(
                model=str(folder / "model"),
                train_path=data[split],
                validation_path=data["validation"],
                output_dir=folder / "out",
                precision="bf16" if args.device == "cuda" else "fp32",
                lora=None,
                learning_rate=args.lr,
                batch_size=args.batch_size,
                max_seq_len=args.seq_len,
                seed=seed,
                device=args.device,
                checkpoint_every=0,
                cuda_graphs=name != TORCH_SCAN,
            )
        )
    wall = time.perf_counter() - start
    m = result.metrics
    return {
        "validation_perplexity": m["validation_perplexity"],
        "tokens_per_second": m["tokens_per_second"],
        "train_seconds": m["trained_tokens"] / m["tokens_per_second"],
        "wall_seconds": wall,
        "parameters": parameters,
        "steps": result.steps,
    }


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def fmt(values: list[float], digits: int) -> str:
    mean, half = interval(values)
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def paired(mine: list[dict[str, float]], base: list[dict[str, float]], metric: str) -> list[float]:
    """Per-seed relative difference in % (same initialization seed and batch order, so seed noise cancels)."""
    return [100 * (a[metric] / b[metric] - 1) for a, b in zip(mine, base, strict=True)]


def table(runs: dict[str, list[dict[str, float]]]) -> str:
    rows = [
        "| model | val. perplexity | Δ ppl vs stock | tokens/s | Δ train time vs stock | Δ train time vs "
        "torch scan | train s | wall s | parameters |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, family, _, _ in [v for v in VARIANTS if v[0] in runs]:
        mine, base = runs[name], runs[BASELINE[family]]
        is_base = name == BASELINE[family]
        vs_torch = family == "mamba" and name not in (BASELINE[family], TORCH_SCAN) and TORCH_SCAN in runs
        rows.append(
            f"| {name} | {fmt([r['validation_perplexity'] for r in mine], 3)} "
            f"| {'—' if is_base else fmt(paired(mine, base, 'validation_perplexity'), 2) + ' %'} "
            f"| {fmt([r['tokens_per_second'] for r in mine], 0)} "
            f"| {'—' if is_base else fmt(paired(mine, base, 'train_seconds'), 1) + ' %'} "
            f"| {fmt(paired(mine, runs[TORCH_SCAN], 'train_seconds'), 1) + ' %' if vs_torch else '—'} "
            f"| {fmt([r['train_seconds'] for r in mine], 2)} "
            f"| {fmt([r['wall_seconds'] for r in mine], 2)} | {int(mine[0]['parameters']):,} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps (steps x batch x seq-len tokens)")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--d-state", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--validation-tokens", type=int, default=32_768)
    parser.add_argument("--json", type=Path, default=None, help="also write every run's numbers here")
    parser.add_argument("--from-json", type=Path, default=None, help="print the tables of a saved --json run")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(table(saved["runs"]))
        return

    with tempfile.TemporaryDirectory(prefix="sparse-bench-") as tmp:
        work = Path(tmp)
        corpus = build_corpus(work / "corpus")
        data = {"train": work / "train.jsonl", "validation": work / "validation.jsonl"}
        # Non-ASCII characters and one EOS per file add a few tokens: the table reports the real steps.
        take_tokens(corpus.train, data["train"], args.steps * args.batch_size * args.seq_len)
        take_tokens(corpus.validation, data["validation"], args.validation_tokens)
        # On the CPU every Mamba runs the torch scan already: the control would repeat Mamba.
        variants = [v for v in VARIANTS if args.device == "cuda" or v[0] != TORCH_SCAN]
        if args.device == "cuda":
            # A few steps of each variant first, not measured: the kernels' first-use compilation and
            # autotuning would otherwise land in the timings of seed 0.
            data["warm-up"] = work / "warm-up.jsonl"
            take_tokens(corpus.train, data["warm-up"], 4 * args.batch_size * args.seq_len)
            for variant in variants:
                run_one(args, variant, 0, data, work, split="warm-up")
        runs: dict[str, list[dict[str, float]]] = {}
        # Seed-major: on a shared machine, load that comes and goes then hits every variant alike.
        for seed in range(args.seeds):
            for variant in variants:
                runs.setdefault(variant[0], []).append(run_one(args, variant, seed, data, work))
                print(variant[0], seed, runs[variant[0]][-1], file=sys.stderr, flush=True)
    if args.json:
        settings = vars(args) | {"json": str(args.json)}
        args.json.write_text(json.dumps({"args": settings, "runs": runs}, indent=2))
    steps = {int(r["steps"]) for rs in runs.values() for r in rs}
    print(
        f"{args.seeds} seeds, {sorted(steps)} steps of {args.batch_size} x {args.seq_len} tokens, d_model "
        f"{args.d_model} x {args.n_layer} layers, d_state {args.d_state}, lr {args.lr}, {args.device}\n"
    )
    print(table(runs))


if __name__ == "__main__":
    main()
