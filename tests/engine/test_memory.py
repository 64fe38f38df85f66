"""A step's memory: the budget a CPU worker gives a job (the host's MemAvailable, or a container's cgroup
limit), and the estimate of a hybrid model's step by its blocks' kinds."""

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from app.families import FAMILIES
from app.families.family import OptionValue
from app.jobs.contract import LoraSpec
from bench import step as step_bench
from worker.engine import memory
from worker.engine.families import family_engine
from worker.engine.lora_fold import attach_lora
from worker.engine.memory import GiB
from worker.engine.spec import InsufficientMemory, TrainSpec
from worker.engine.tiny_model import byte_tokenizer, family_config
from worker.engine.trainer import train


def fake_cgroup(root: Path, limit: str, usage: int, inactive_file: int) -> Path:
    root.mkdir()
    (root / "memory.max").write_text(f"{limit}\n")
    (root / "memory.current").write_text(f"{usage}\n")
    (root / "memory.stat").write_text(f"anon {usage - inactive_file}\ninactive_file {inactive_file}\n")
    return root


def test_a_containers_cgroup_limit_sets_the_budget_with_its_reclaimable_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if memory.host_available_bytes() < 4 * GiB:
        pytest.skip("the host itself has less free memory than the container limit below")
    monkeypatch.setattr(memory, "CGROUP_ROOT", fake_cgroup(tmp_path / "cg", str(4 * GiB), 1 * GiB, GiB // 2))

    assert memory.host_available_bytes() == 3.5 * GiB  # 4 GiB limit - 1 GiB used + 0.5 GiB of page cache
    assert memory.device_budget(torch.device("cpu")) == int(3.5 * GiB * memory.BUDGET_FRACTION["cpu"])


def test_without_a_cgroup_limit_the_budget_is_a_share_of_memavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "CGROUP_ROOT", fake_cgroup(tmp_path / "cg", "max", 1 * GiB, 0))
    available = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable:")
    )

    assert memory.host_available_bytes() == pytest.approx(available, rel=0.05)


def hybrid(family: str, attention: str = "sdpa", lora: bool = True, **options: OptionValue) -> nn.Module:
    """A random-init d64 x 4 model of a hybrid family (its tiny defaults but `options`), with LoRA as a job has it."""
    shape = FAMILIES[family].shape(d_model=64, n_layer=4, d_state=8, variant=None, options=options)
    engine = family_engine(family)
    config = family_config(engine, shape, 257, 256)
    config._attn_implementation = attention
    model = engine.causal_lm(config)
    return attach_lora(model, LoraSpec.for_family(family)) if lora else model


def estimate(model: nn.Module, batch: int, seq_len: int) -> int:
    size = memory.ModelSize.of(model, family=model.config.model_type, fused=False)
    return memory.step_bytes(size, memory.StepShape(batch, seq_len, "fp32", activation_recompute=False))


def test_a_hybrid_counts_each_block_by_its_kind_not_every_block_as_a_mamba_mixer() -> None:
    # One Mamba-2 block and three cheaper ones (attention, MLP, experts), against four Mamba-2 blocks.
    one_mixer, all_mixers = hybrid("nemotron_h", layer_pattern="M*-E"), hybrid("nemotron_h", layer_pattern="MMMM")
    size = memory.ModelSize.of(all_mixers, family="nemotron_h", fused=False)
    mixer = memory.layer_bytes(size, size.layers[0], "fp32").kept  # what a Mamba-2 block keeps per token

    # The three cheaper blocks together keep less than two more mixers would.
    assert estimate(one_mixer, 4, 1024) < estimate(all_mixers, 4, 1024) - memory.SAFETY * 4096 * 2 * mixer


@pytest.mark.parametrize("family", ["nemotron_h", "granitemoehybrid", "falcon_h1", "jamba", "zamba2", "bamba"])
def test_attention_makes_longer_rows_of_the_same_tokens_cost_more_by_their_scores(family: str) -> None:
    """At 8,192 tokens a step, one row of 8,192 against two of 4,096: a Mamba-only model's activations are the
    same, attention's (l, l) scores and document mask grow with l; eager attention's with every head too."""
    sdpa, eager = hybrid(family), hybrid(family, attention="eager")
    heads = sdpa.config.num_attention_heads
    square = 8192**2 - 2 * 4096**2  # (l x l) elements one row of 8,192 has over two of 4,096

    sdpa_growth = estimate(sdpa, 1, 8192) - estimate(sdpa, 2, 4096)
    eager_growth = estimate(eager, 1, 8192) - estimate(eager, 2, 4096)

    assert sdpa_growth >= memory.SAFETY * square  # the boolean document mask
    # The float mask, and the scores every head keeps for backward.
    assert eager_growth >= memory.SAFETY * square * (4 + heads * memory.EAGER_SCORE_BYTES[0])
    assert eager_growth > sdpa_growth


def test_a_job_whose_attention_scores_cannot_fit_is_refused_naming_the_knobs(tmp_path: Path) -> None:
    """Falcon-H1 with eager attention at 1 x 16,384 tokens, given what the same step with sdpa attention (which
    keeps no scores) needs: every head's scores do not fit, and a shorter max_seq_len does."""
    folder = tmp_path / "falcon_h1-eager"
    hybrid("falcon_h1", lora=False).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "attn_implementation": "eager"}))
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"text": "the old man carries the yellow ball. " * 500}) + "\n")
    sdpa = memory.ModelSize.of(hybrid("falcon_h1"), family="falcon_h1", fused=False)
    budget = memory.step_bytes(sdpa, memory.StepShape(1, 16384, "fp32", activation_recompute=False))
    spec = TrainSpec(
        model=str(folder),
        train_path=data,
        output_dir=tmp_path / "out",
        batch_size=1,
        max_seq_len=16384,
        device="cpu",
        memory_budget_bytes=budget,
    )

    with pytest.raises(InsufficientMemory) as refused:
        train(spec)

    message = str(refused.value)
    assert "batch_size 1 x max_seq_len 16384, fp32" in message and "hyperparameters.max_seq_len" in message
    shorter = re.search(r"max_seq_len (\d+) fits", message)
    assert shorter is not None and int(shorter.group(1)) <= 8192, message
    assert not (tmp_path / "out" / "checkpoints").exists()  # it never trained a step


# Peak GiB of one bf16 LoRA step at bench/step.py's ~1B shape (d_model 2048, batch 8 x 1024, every default target),
# measured on an H200 (bench/RESULTS.md, "A ~1B hybrid's LoRA step against stock").
MEASURED_1B_PEAK_GIB = {
    "bamba": 21.35,
    "granitemoehybrid": 21.22,
    "zamba2": 13.40,
    "nemotron_h": 20.88,
    "jamba": 28.72,
    "falcon_mamba": 20.17,
    "falcon_h1": 26.35,
}


@pytest.mark.parametrize("family", sorted(MEASURED_1B_PEAK_GIB))
def test_the_cuda_estimate_of_every_familys_1b_step_covers_its_measured_peak(family: str) -> None:
    layers, _ = step_bench.HYBRIDS[family]
    model = step_bench.build("ours_graph", family, 2048, layers, 50280, "meta", "bf16")  # shapes only: no memory
    for param in model.parameters():
        param.data = param.data.float() if param.requires_grad else param.data.to(torch.bfloat16)
    size = memory.ModelSize.of(model, family=family, fused=True)
    estimate = memory.step_bytes(size, memory.StepShape(8, 1024, "bf16", activation_recompute=False)) / GiB

    assert estimate >= MEASURED_1B_PEAK_GIB[family], estimate
