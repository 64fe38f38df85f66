"""Falcon-H1's own parts: its muP multipliers and optional gated norm on the fused path (run here through a
torch stand-in for mamba-ssm's kernel), its logits multiplier in the trainer's loss, its architecture options
over HTTP, and a short bf16 and fp16 run."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from safetensors.torch import load_file
from transformers import PretrainedConfig, PreTrainedModel

from app.families import FAMILIES
from families.factories import record_attached_lora
from worker.engine import kernels
from worker.engine.families import falcon_h1, family_engine, mamba2, ssm_mixers
from worker.engine.lora_fold import attach_lora
from worker.engine.loss import next_token_loss
from worker.engine.mamba_forward import install_forwards
from worker.engine.model_builder import Architecture, create_model_folder
from worker.engine.spec import LoraSpec, TrainSpec
from worker.engine.trainer import train

DEMO = Path(__file__).resolve().parents[2] / "demo"
VOCAB = 64
# Unlike a random-init model's (all 1), as a released checkpoint's are.
MUP = {
    "ssm_in_multiplier": 1.25,
    "ssm_multipliers": [0.35, 0.25, 0.7, 0.5, 1.4],
    "ssm_out_multiplier": 0.6,
    "attention_in_multiplier": 0.8,
    "attention_out_multiplier": 0.9,
    "key_multiplier": 0.4,
    "mlp_multipliers": [0.9, 0.6],
    "embedding_multiplier": 2.0,
    "lm_head_multiplier": 0.25,
}


def tiny(family: str, n_layer: int) -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    """The config and class of a random-init model of `family` as the engine builds one (default options)."""
    shape = FAMILIES[family].shape(d_model=32, n_layer=n_layer, d_state=8, variant=None, options={})
    engine = family_engine(family)
    return engine.build_config(shape, VOCAB, {}), engine.causal_lm


def falcon(**fields: object) -> PreTrainedModel:
    config, causal_lm = tiny("falcon_h1", 2)
    config.update(MUP | fields)  # before the model is built: its muP vector is computed from them then
    torch.manual_seed(0)
    return causal_lm(config)


def mamba2_model() -> PreTrainedModel:
    config, causal_lm = tiny("mamba2", 1)
    torch.manual_seed(0)
    return causal_lm(config)


def split_scan_stand_in(
    zxbcdt: torch.Tensor,
    conv1d_weight: torch.Tensor,
    conv1d_bias: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    *,
    D: torch.Tensor,
    chunk_size: int,
    activation: str,
    outproj_weight: torch.Tensor,
    outproj_bias: torch.Tensor | None,
    headdim: int,
    ngroups: int,
    dt_limit: tuple[float, float],
    rmsnorm_weight: torch.Tensor | None,
    rmsnorm_eps: float = 1e-6,
    norm_before_gate: bool = True,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """mamba-ssm's `mamba_split_conv1d_scan_combined` as its reference `mamba_split_conv1d_scan_ref` defines it,
    one step per token (one group): z | xBC | dt, causal conv on xBC, the scan with D, then z's gate, in the
    scan without a norm, else around the gated RMSNorm; then out_proj."""
    assert ngroups == 1 and activation == "silu" and seq_idx is None  # one document a row
    b, length, _ = zxbcdt.shape
    heads = A.shape[0]
    dim = heads * headdim
    z, xbc, dt = zxbcdt.split([dim, zxbcdt.shape[-1] - dim - heads, heads], dim=-1)
    xbc = F.conv1d(xbc.transpose(1, 2), conv1d_weight[:, None], conv1d_bias, padding=3, groups=xbc.shape[-1])
    state_size = (xbc.shape[1] - dim) // 2
    x, B, C = F.silu(xbc[..., :length]).transpose(1, 2).split([dim, state_size, state_size], dim=-1)
    dt = F.softplus(dt + dt_bias).clamp(*dt_limit)  # (b, l, heads)
    x = x.reshape(b, length, heads, headdim)
    state, ys = zxbcdt.new_zeros(b, heads, headdim, B.shape[-1]), []
    for t in range(length):
        step = dt[:, t, :, None, None]
        state = state * torch.exp(step * A[:, None, None]) + step * x[:, t, ..., None] * B[:, t, None, None]
        ys.append((state * C[:, t, None, None]).sum(-1) + D[:, None] * x[:, t])
    y = torch.stack(ys, dim=1).reshape(b, length, dim)
    gate = F.silu(z)
    if rmsnorm_weight is None:
        y = y * gate
    else:

        def rms(v: torch.Tensor) -> torch.Tensor:
            return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + rmsnorm_eps) * rmsnorm_weight

        y = rms(y) * gate if norm_before_gate else rms(y * gate)
    return F.linear(y, outproj_weight, outproj_bias)


FALCON_PARTS = {"projection": falcon_h1.in_projection, "norm_args": falcon_h1.gated_norm_args}
CASES = {
    "falcon_h1 without the norm": (falcon, FALCON_PARTS),
    "falcon_h1 gating, then norming": (
        lambda: falcon(mamba_rms_norm=True, mamba_norm_before_gate=False),
        FALCON_PARTS,
    ),
    "falcon_h1 norming, then gating": (lambda: falcon(mamba_rms_norm=True, mamba_norm_before_gate=True), FALCON_PARTS),
    "mamba2": (mamba2_model, {}),
}


# On CUDA the fused path is mamba-ssm's kernel itself (the lead's GPU run); it sums in its own order (tf32).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
TOLERANCE = {"cpu": (1e-5, 1e-4), "cuda": (1e-2, 1e-2)}  # outputs, gradients: of their largest magnitude on CUDA


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_the_fused_paths_arguments_compute_the_models_own_mixer_with_lora(
    case: str, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    build, parts = CASES[case]
    model = attach_lora(install_forwards(build()), LoraSpec(r=4, alpha=8, target_modules=("in_proj", "out_proj")))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.to(device)
    mixer = ssm_mixers(model)[0]
    hidden = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(0)).to(device)
    model.eval()  # the model's own forward takes its torch path

    def run(forward) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = forward()
        lora = [p for n, p in mixer.named_parameters() if "lora_" in n]
        grads = torch.autograd.grad(out.square().sum(), lora)
        return out, grads

    expected, expected_grads = run(lambda: mixer.hf_forward(hidden))
    if device == "cpu":
        monkeypatch.setattr(kernels, "mamba_split_conv1d_scan_combined", split_scan_stand_in)
    ours, grads = run(lambda: mamba2.fused_forward(mixer, hidden, **parts))

    scale = (lambda t: t.abs().max()) if device == "cuda" else (lambda t: 1)
    outputs, gradients = TOLERANCE[device]
    assert torch.allclose(ours, expected, rtol=0, atol=outputs * scale(expected)), (ours - expected).abs().max()
    assert len(grads) == 4 and all(g.abs().sum() > 0 for g in grads)  # A and B of in_proj and out_proj
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want, rtol=0, atol=gradients * scale(want)), (got - want).abs().max()


def test_under_autocast_the_fused_kernel_gets_zxbcdt_in_the_autocast_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    # As for Mamba-2, whose in_proj output goes to the kernel as it is: frozen weights stored in bf16 (the
    # trainer casts parameters, not buffers) must not meet an fp32 zxbcdt promoted by the fp32 muP vector.
    model = attach_lora(install_forwards(falcon()), LoraSpec(r=4, alpha=8, target_modules=("in_proj", "out_proj")))
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    seen: list[torch.dtype] = []

    def kernel(zxbcdt: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(zxbcdt.dtype)
        return zxbcdt.new_zeros(*zxbcdt.shape[:2], 32)

    monkeypatch.setattr(kernels, "mamba_split_conv1d_scan_combined", kernel)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mamba2.fused_forward(ssm_mixers(model)[0], torch.randn(2, 12, 32), **FALCON_PARTS)

    assert seen == [torch.bfloat16]


def test_the_loss_scales_the_logits_as_the_model_does() -> None:
    model = install_forwards(falcon())
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss
        unscaled = F.cross_entropy(model(input_ids=ids).logits[:, :-1].flatten(0, 1) * 4, ids[:, 1:].flatten())
        loss = next_token_loss(model, ids[:, :-1], ids[:, 1:], chunk_tokens=7)
    assert torch.allclose(loss, expected, atol=1e-5) and not torch.allclose(loss, unscaled, atol=1e-2)


def test_a_wrong_option_is_400_naming_it_and_the_model_shows_its_filled_options(
    client: TestClient, model_requests: list[str]
) -> None:
    body = {"id": "h1", "family": "falcon_h1", "d_model": 32, "n_layer": 2, "d_state": 8}
    for options, param in [
        ({"kv_heads": 3}, "options.kv_heads"),  # 4 attention heads
        ({"attention_heads": 32}, "options.attention_heads"),  # heads of one channel
        ({"ssm_heads": 5}, "options.ssm_heads"),
        ({"ssm_norm": "layer"}, "options.ssm_norm"),
        ({"experts": 2}, "options.experts"),
    ]:
        response = client.post("/v1/models", json={**body, "options": options})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    assert model_requests == []

    created = client.post("/v1/models", json={**body, "options": {"ssm_norm": "gated", "mlp_size": 40}})
    assert created.status_code == 200, created.text
    shown = client.get("/v1/models/h1").json()["options"]
    assert shown == {"attention_heads": 4, "kv_heads": 2, "mlp_size": 40, "ssm_heads": 4, "ssm_norm": "gated"}


def _head(folder: Path, name: str, lines: int) -> Path:
    path = folder / name
    path.write_text("\n".join((DEMO / name).read_text().splitlines()[:lines]) + "\n")
    return path


# On the CPU test_family_jobs.py runs every family's half-precision step; here on CUDA: the fused mixers, the
# step replayed as a CUDA graph.
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_half_precision_run_trains_every_lora_tensor(
    precision: str, device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arch = Architecture(id="m", family="falcon_h1", d_model=32, n_layer=2, d_state=8, options={"ssm_norm": "gated"})
    create_model_folder(arch, tmp_path / "model")
    initial = record_attached_lora(monkeypatch)
    spec = TrainSpec(
        model=str(tmp_path / "model"),
        train_path=_head(tmp_path, "train.jsonl", 16),
        validation_path=None,
        output_dir=tmp_path / "out",
        lora=LoraSpec(r=4, alpha=8, target_modules=falcon_h1.ENGINE.catalog.default_targets),
        batch_size=4,
        max_seq_len=32,
        learning_rate=1e-2,
        warmup_steps=1,
        device=device,
        precision=precision,
    )
    result = train(spec)

    assert torch.isfinite(torch.tensor(result.metrics["train_loss"])) and result.metrics["skipped_steps"] == 0
    trained = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert initial and trained.keys() == initial.keys()
    assert [name for name, value in initial.items() if torch.equal(trained[name], value)] == []
