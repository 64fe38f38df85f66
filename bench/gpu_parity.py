"""Fused CUDA path vs pure-torch reference, Mamba and Mamba-2, every LoRA target, fp32 and bf16.

Prints one JSON line per case: max logit difference, cosine similarity of every target's LoRA
gradients (fused vs reference), train-vs-eval agreement, and — for contrast, in the same run — whether
stock transformers + peft lets a gradient reach LoRA on x_proj / dt_proj in training mode.
tests/gpu/test_parity_gpu.py runs the same `parity` on the tiny models and holds its figures.

    python3 bench/gpu_parity.py            # needs CUDA and the mamba-ssm / causal-conv1d wheels
"""

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import (
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from worker.engine.kernels import fused_kernels_available
from worker.engine.lora_fold import attach_lora
from worker.engine.mamba_forward import install_forwards
from worker.engine.spec import LoraSpec

DEV = "cuda"
TARGETS = {
    "mamba": ("in_proj", "x_proj", "dt_proj", "out_proj"),
    "mamba2": ("in_proj", "out_proj"),
    "falcon_mamba": ("in_proj", "x_proj", "dt_proj", "out_proj"),
}
REFERENCE_PATH = {"mamba": "reference", "mamba2": "torch", "falcon_mamba": "reference"}


def make(family: str) -> torch.nn.Module:
    """The bench's random-init model: d_model 512 x 4 layers, vocab 1024."""
    torch.manual_seed(0)
    with torch.device(DEV):
        if family in ("mamba", "falcon_mamba"):
            lm, config = (
                (MambaForCausalLM, MambaConfig) if family == "mamba" else (FalconMambaForCausalLM, FalconMambaConfig)
            )
            return lm(config(vocab_size=1024, hidden_size=512, num_hidden_layers=4, state_size=16))
        return Mamba2ForCausalLM(
            Mamba2Config(
                vocab_size=1024,
                hidden_size=512,
                num_hidden_layers=4,
                state_size=64,
                expand=2,
                head_dim=64,
                num_heads=16,
                n_groups=1,
                chunk_size=64,
            )
        )


def lora_model(base: torch.nn.Module, family: str, precision: str) -> torch.nn.Module:
    """`base` with an adapter on every target of its family, the same adapter for the same base."""
    torch.manual_seed(1)
    model = attach_lora(install_forwards(base), LoraSpec(r=8, alpha=16, target_modules=TARGETS[family]))
    with torch.no_grad():  # a trained-looking adapter, so forward values and A's gradients are non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model = model.to(DEV)
    if precision == "bf16":
        for p in model.parameters():
            p.data = p.data.float() if p.requires_grad else p.data.to(torch.bfloat16)
    return model


def run(model: torch.nn.Module, ids: torch.Tensor, precision: str, path: str, train: bool = True):
    install_forwards(model, path)
    model.train(train)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.detach().float().flatten() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach().float(), grads


def target_of(name: str) -> str:
    return next(t for t in ("in_proj", "x_proj", "dt_proj", "out_proj") if f".{t}." in name)


def min_cosine_by_target(grads: dict, truth: dict) -> dict[str, float]:
    cosine: dict[str, float] = {}
    for name, g in grads.items():
        c = F.cosine_similarity(g, truth[name], dim=0).item() if g.norm() > 0 else 0.0
        t = target_of(name)
        cosine[t] = round(min(cosine.get(t, 1.0), c), 5)
    return cosine


def parity(
    family: str, precision: str, base: Callable[[], torch.nn.Module] | None = None, batch: int = 4, seq: int = 512
) -> dict:
    """Fused vs reference on `base()` (the same weights at every call; the bench's `make` by default)."""
    base = base or (lambda: make(family))
    model = lora_model(base(), family, precision)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch, seq), device=DEV, generator=torch.Generator(DEV).manual_seed(0))
    fused_logits, fused_grads = run(model, ids, precision, "auto")
    eval_logits, _ = run(model, ids, precision, "auto", train=False)
    ref_logits, ref_grads = run(model, ids, precision, REFERENCE_PATH[family])
    # Both bf16 paths round differently; the fp32 reference of the same adapter is the ground truth.
    _, truth_grads = run(lora_model(base(), family, "fp32"), ids, "fp32", REFERENCE_PATH[family])
    return dict(
        family=family,
        precision=precision,
        max_logit_diff=round((fused_logits - ref_logits).abs().max().item(), 5),
        logit_scale=round(ref_logits.abs().max().item(), 3),
        train_vs_eval_max_diff=round((fused_logits - eval_logits).abs().max().item(), 6),
        min_lora_grad_cosine=min_cosine_by_target(fused_grads, ref_grads),
        min_lora_grad_cosine_fused_vs_fp32_reference=min_cosine_by_target(fused_grads, truth_grads),
        all_lora_grads_nonzero=all(g.norm() > 0 for g in fused_grads.values()),
    )


def stock_gradient_check() -> dict:
    """Stock stack: peft LoRA on in_proj/x_proj/dt_proj, the model's own forward, training mode."""
    model = make("mamba")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS["mamba"][:3]))).to(DEV)
    ids = torch.randint(0, 1024, (4, 512), device=DEV)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    flows = {
        t: any(
            p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if f".{t}.lora_B" in n
        )
        for t in TARGETS["mamba"][:3]
    }
    return dict(stock_lora_B_gets_gradient_in_train_mode=flows)


if __name__ == "__main__":
    print("torch", torch.__version__, torch.cuda.get_device_name(), "fused kernels:", fused_kernels_available())
    for family in TARGETS:
        for precision in ("fp32", "bf16"):
            print(json.dumps(parity(family, precision)), flush=True)
    print(json.dumps(stock_gradient_check()), flush=True)
