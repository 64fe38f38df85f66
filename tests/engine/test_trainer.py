"""End-to-end LoRA and full fine-tuning runs of the tiny models on the demo task, per precision."""

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from worker.engine import cuda_graph, families
from worker.engine import precision as precision_module
from worker.engine import trainer as trainer_module
from worker.engine.loading import load_base
from worker.engine.lora_fold import attach_lora, load_adapter
from worker.engine.precision import PrecisionPolicy
from worker.engine.spec import LoraSpec, Progress, TrainHooks, TrainingDiverged, TrainSpec
from worker.engine.trainer import train

LORA = LoraSpec(r=8, alpha=16.0, target_modules=("in_proj", "out_proj"))


def make_spec(model: Path, train_path: Path, valid_path: Path, out: Path, **overrides) -> TrainSpec:
    spec = TrainSpec(
        model=str(model),
        train_path=train_path,
        validation_path=valid_path,
        output_dir=out,
        lora=LORA,
        batch_size=8,
        max_seq_len=64,
        learning_rate=3e-3,
        warmup_steps=2,
        checkpoint_every=100,
        device="cpu",
    )
    return replace(spec, **overrides)


def assert_learned(metrics: dict) -> None:
    # Random init scores ~ln(264) = 5.6 nats; one short epoch must take a clear bite out of it.
    assert metrics["validation_loss"] < metrics["base_validation_loss"] - 0.5, metrics


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lora_run_lowers_validation_loss_and_writes_adapter(precision, tiny_mamba, demo_train, demo_valid, tmp_path):
    progress: list[Progress] = []
    spec = make_spec(tiny_mamba, demo_train, demo_valid, tmp_path, precision=precision)
    result = train(spec, TrainHooks(on_progress=progress.append))
    assert_learned(result.metrics)
    assert [p.step for p in progress] == list(range(1, result.steps + 1)) and progress[-1].total_steps == result.steps
    assert progress[-1].trained_tokens == result.trained_tokens > 0 and progress[-1].tokens_per_second > 0
    assert result.metrics["precision"] == precision and result.metrics["skipped_steps"] == 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == result.metrics
    adapter = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero


def test_bf16_stores_frozen_weights_in_bf16_and_keeps_trainable_and_ssm_params_fp32(tiny_mamba):
    model, _, _ = load_base(str(tiny_mamba), device=torch.device("cpu"))
    model = attach_lora(model, LORA)
    PrecisionPolicy("bf16", torch.device("cpu")).prepare(model)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["base_model.model.backbone.layers.0.mixer.in_proj.base_layer.weight"] == torch.bfloat16
    assert dtypes["base_model.model.backbone.layers.0.mixer.in_proj.lora_A.default.weight"] == torch.float32
    assert dtypes["base_model.model.backbone.layers.0.mixer.A_log"] == torch.float32
    assert dtypes["base_model.model.backbone.norm_f.weight"] == torch.float32


def test_fp16_overflow_step_is_skipped_counted_and_training_recovers(
    tiny_mamba, demo_train, demo_valid, tmp_path, monkeypatch
):
    real_step = PrecisionPolicy.step
    calls: list[bool] = []
    frozen_across_overflow: list[bool] = []

    def step_with_overflow_at_3(self, optimizer):
        if len(calls) != 2:
            calls.append(real_step(self, optimizer))
            return calls[-1]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        params[0].grad.fill_(float("inf"))  # as if the fp16 backward had overflowed
        before = [p.detach().clone() for p in params]
        calls.append(real_step(self, optimizer))
        frozen_across_overflow.append(all(torch.equal(a, p) for a, p in zip(before, params, strict=True)))
        return calls[-1]

    monkeypatch.setattr(precision_module.PrecisionPolicy, "step", step_with_overflow_at_3)
    progress: list[Progress] = []
    spec = make_spec(tiny_mamba, demo_train, demo_valid, tmp_path, precision="fp16")
    result = train(spec, TrainHooks(on_progress=progress.append))
    assert calls[2] is False and frozen_across_overflow == [True]  # skipped: no parameter moved
    assert result.metrics["skipped_steps"] == calls.count(False) >= 1
    assert progress[2].skipped_steps == progress[-1].skipped_steps == calls.count(False)
    assert_learned(result.metrics)


def plant_gradients(monkeypatch, value: float, at_calls: range) -> list[bool]:
    """Make the optimizer steps numbered `at_calls` (0-based) see gradients of `value`; returns what each
    step reported (False: skipped by the fp16 loss scaler)."""
    real_step = PrecisionPolicy.step
    applied: list[bool] = []

    def step(self, optimizer):
        if len(applied) in at_calls:
            next(p for g in optimizer.param_groups for p in g["params"]).grad.fill_(value)
        applied.append(real_step(self, optimizer))
        return applied[-1]

    monkeypatch.setattr(precision_module.PrecisionPolicy, "step", step)
    return applied


def test_a_nan_gradient_fails_the_run_after_3_steps_and_keeps_the_last_finite_checkpoint(
    tiny_mamba, demo_train, demo_valid, tmp_path, monkeypatch
):
    plant_gradients(monkeypatch, float("nan"), range(2, 3))  # step 3's update makes every weight nan
    messages: list[str] = []
    spec = make_spec(tiny_mamba, demo_train, demo_valid, tmp_path, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=r"not finite for 3 steps in a row \(steps 3-5"):
        train(spec, TrainHooks(on_message=messages.append))
    assert "No checkpoint at step 3: the weights are not finite" in messages
    kept = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-000002"]
    weights = load_file(str(tmp_path / "checkpoints" / "step-000002" / "trainable.safetensors"))
    assert all(bool(tensor.isfinite().all()) for tensor in weights.values())
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "metrics.json").exists()


def test_fp16_steps_skipped_by_the_loss_scaler_are_not_divergence(
    tiny_mamba, demo_train, demo_valid, tmp_path, monkeypatch
):
    applied = plant_gradients(monkeypatch, float("inf"), range(2, 7))  # 5 overflowing steps in a row
    result = train(make_spec(tiny_mamba, demo_train, demo_valid, tmp_path, precision="fp16"))
    assert applied[2:7] == [False] * 5 and result.metrics["skipped_steps"] == applied.count(False)
    adapter = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert all(bool(tensor.isfinite().all()) for tensor in adapter.values())


def test_full_fine_tuning_lowers_loss_and_saves_a_loadable_model(tiny_mamba, demo_train, demo_valid, tmp_path):
    spec = make_spec(tiny_mamba, demo_train, demo_valid, tmp_path, lora=None, learning_rate=1e-3)
    result = train(spec)
    assert_learned(result.metrics)
    assert result.adapter_dir == tmp_path / "model"
    tuned = AutoModelForCausalLM.from_pretrained(result.adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_mamba)
    assert not torch.equal(tuned.backbone.layers[0].mixer.in_proj.weight, base.backbone.layers[0].mixer.in_proj.weight)
    assert (result.adapter_dir / "tokenizer.json").is_file()


def test_merged_export_is_a_plain_model_with_the_adapters_logits(tiny_mamba, demo_train, demo_valid, tmp_path):
    targets = ("in_proj", "x_proj", "dt_proj", "out_proj", "lm_head")  # the head shares its weight with the embeddings
    lora = LoraSpec(r=8, alpha=16.0, target_modules=targets, export_merged=True)
    result = train(make_spec(tiny_mamba, demo_train, demo_valid, tmp_path, lora=lora))
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    adapted = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_mamba), result.adapter_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()  # plain transformers, no mambaft code
    base = AutoModelForCausalLM.from_pretrained(tiny_mamba).eval()
    with torch.no_grad():
        expected = adapted(ids).logits
        assert not torch.allclose(base(ids, use_cache=False).logits, expected, atol=1e-3)
        assert torch.allclose(merged(ids, use_cache=False).logits, expected, atol=1e-4)
    assert (result.merged_dir / "tokenizer.json").is_file()


def test_mamba2_lora_smoke(tiny_mamba2, demo_train, demo_valid, tmp_path):
    result = train(make_spec(tiny_mamba2, demo_train, demo_valid, tmp_path))
    assert_learned(result.metrics)
    assert result.metrics["family"] == "mamba2"
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == LORA.r


def test_memory_lean_mode_recomputes_the_layers_and_trains_to_the_same_losses(
    tiny_mamba, demo_train, demo_valid, tmp_path, monkeypatch
):
    # Recomputing each layer in backward changes what is kept, not what is computed: on the CPU in fp32
    # every step's loss and the validation loss agree to rounding, while the mixers run more often.
    calls = []
    counted = families.ENGINES["mamba"].mixer_forward
    counting = replace(families.ENGINES["mamba"], mixer_forward=lambda *a, **k: calls.append(1) or counted(*a, **k))
    monkeypatch.setitem(families.ENGINES, "mamba", counting)
    runs = {}
    for recompute in (False, True):
        losses: list[float] = []
        calls.clear()
        spec = make_spec(tiny_mamba, demo_train, demo_valid, tmp_path / str(recompute), activation_recompute=recompute)
        result = train(spec, TrainHooks(on_progress=lambda p, losses=losses: losses.append(p.loss)))
        runs[recompute] = (losses, result.metrics["validation_loss"], len(calls))
    (plain_losses, plain_valid, plain_calls), (lean_losses, lean_valid, lean_calls) = runs[False], runs[True]
    assert len(plain_losses) > 1 and lean_losses == pytest.approx(plain_losses, abs=1e-5)
    assert lean_valid == pytest.approx(plain_valid, abs=1e-5)
    # Every training step runs each mixer once more, in backward.
    layers = AutoConfig.from_pretrained(tiny_mamba).num_hidden_layers
    assert lean_calls - plain_calls == len(lean_losses) * layers


def test_reported_tokens_per_second_leaves_out_the_warm_up_steps(
    tiny_mamba, demo_train, demo_valid, tmp_path, monkeypatch
):
    """As the step benchmark does: a first step that compiles kernels or captures a graph must not drag the
    job's tokens/s down. A clock that the steps advance: 10 s for each warm-up step, 1 s for the rest."""
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    real_step = cuda_graph.ForwardBackward.step
    calls: list[int] = []

    def timed_step(self, *batch):
        calls.append(1)
        clock.now += 10.0 if len(calls) <= trainer_module.WARMUP_STEPS else 1.0
        return real_step(self, *batch)

    monkeypatch.setattr(cuda_graph.ForwardBackward, "step", timed_step)
    progress: list[Progress] = []
    result = train(make_spec(tiny_mamba, demo_train, demo_valid, tmp_path), TrainHooks(on_progress=progress.append))

    warm = trainer_module.WARMUP_STEPS
    assert result.steps > warm + 2
    steady = (progress[-1].trained_tokens - progress[warm - 1].trained_tokens) / (result.steps - warm)
    assert result.metrics["tokens_per_second"] == pytest.approx(steady)
    assert progress[-1].tokens_per_second == pytest.approx(steady)
    assert progress[warm - 1].tokens_per_second == pytest.approx(progress[warm - 1].trained_tokens / (10.0 * warm))
    # Each step says what it took itself, warm-up or not.
    assert [p.step_seconds for p in progress[warm - 1 : warm + 1]] == [10.0, 1.0]
    # The ETA counts the steps left at the steady pace: 1 s each.
    assert progress[warm].eta_seconds == pytest.approx(result.steps - warm - 1, rel=0.05)
