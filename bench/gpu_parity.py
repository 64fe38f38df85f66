"""Fused CUDA path vs pure-torch reference, every family, every default LoRA target, fp32 and bf16.

Prints one JSON line per case: max logit difference, cosine similarity of every target's LoRA
gradients (fused vs reference), train-vs-eval agreement, and — for contrast, in the same run — whether
stock transformers + peft lets a gradient reach LoRA on x_proj / dt_proj in training mode.
tests/gpu/test_parity_gpu.py runs the same `parity` on the tiny models and holds its figures.

    python3 bench/gpu_parity.py            # needs CUDA and the mamba-ssm / causal-conv1d wheels
"""

import inspect
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.families import FAMILIES
from worker.engine.families import family_engine
from worker.engine.kernels import fused_kernels_available
from worker.engine.lora_fold import attach_lora
from worker.engine.mamba_forward import install_forwards
from worker.engine.spec import LoraSpec
from worker.engine.tiny_model import family_config

DEV = "cuda"
# Every family's default targets: all layer kinds of a hybrid (attention, MLP, experts) beside the mixer's.
TARGETS = {model_type: family.default_targets for model_type, family in FAMILIES.items()}
# What the figures are keyed by: a module target, or the module of parameter targets (peft nests one
# wrapper per parameter of `experts`, so its LoRA tensors name the module, not the parameter).
GROUPS = {
    model_type: tuple(dict.fromkeys(t.rpartition(".")[0] if t in f.parameter_targets else t for t in f.default_targets))
    for model_type, f in FAMILIES.items()
}
# The bench's own Mamba-1 models keep a state of 16, as the reference checkpoints do; the others 64.
MAMBA1_STATE = ("mamba", "falcon_mamba")
# Mamba-2 mixers of 64-channel heads, as the reference checkpoints (and mamba2, zamba2) have: one set of the
# Triton kernels' compiled shapes serves every family.
OPTIONS = {
    "nemotron_h": {"mamba_head_dim": 64},
    "granitemoehybrid": {"mamba_head_dim": 64},
    "bamba": {"mamba_head_dim": 64},
    "falcon_h1": {"ssm_heads": 16},
}
# The kernels a model's own forward calls: transformers wraps each in a module-level function that calls the
# installed package's (for CPU tensors too) and keeps its pure-torch version as `__wrapped__`.
KERNEL_FUNCTIONS = (
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "mamba_inner_fn",
    "mamba_selective_scan",
    "mamba_selective_state_update",
    "mamba2_chunk_scan",
    "mamba2_selective_state_update",
    "mamba2_split_conv1d_scan_combined",
)


def make(family: str) -> torch.nn.Module:
    """The bench's random-init model of `family`: d_model 512 x 4 layers, vocab 1024, Mamba-2 heads of 64."""
    torch.manual_seed(0)
    shape = FAMILIES[family].shape(
        d_model=512,
        n_layer=4,
        d_state=16 if family in MAMBA1_STATE else 64,
        variant=None,
        options=OPTIONS.get(family, {}),
    )
    config = family_config(family_engine(family), shape, 1024, eos_id=0)
    with torch.device(DEV):
        return family_engine(family).causal_lm(config)


def lora_model(base: torch.nn.Module, family: str, precision: str, device: str | None = None) -> torch.nn.Module:
    """`base` with an adapter on every target of its family, the same adapter for the same base."""
    torch.manual_seed(1)
    model = attach_lora(install_forwards(base), LoraSpec(r=8, alpha=16, target_modules=TARGETS[family]))
    with torch.no_grad():  # a trained-looking adapter, so forward values and A's gradients are non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model = model.to(device or DEV)
    if precision == "bf16":
        for p in model.parameters():
            p.data = p.data.float() if p.requires_grad else p.data.to(torch.bfloat16)
    return model


@contextmanager
def kernels_hidden() -> Iterator[None]:
    """transformers' modeling modules with their pure-torch kernels in place of the packages', so that a model's
    own forward runs on the CPU (the reference does); as they were afterwards."""
    wrapped = [
        (module, name, getattr(module, name))
        for module_name, module in list(sys.modules.items())
        if module_name.startswith("transformers.models.") and ".modeling_" in module_name
        for name in KERNEL_FUNCTIONS
        if hasattr(getattr(module, name, None), "__wrapped__")
    ]
    for module, name, function in wrapped:
        setattr(module, name, inspect.unwrap(function))
    try:
        yield
    finally:
        for module, name, function in wrapped:
            setattr(module, name, function)


def run(model: torch.nn.Module, ids: torch.Tensor, precision: str, path: str, train: bool = True):
    install_forwards(model, path)
    model.train(train)
    model.zero_grad(set_to_none=True)
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.detach().float().flatten() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach().float(), grads


def target_of(name: str, groups: tuple[str, ...]) -> str:
    """The group (GROUPS) a LoRA tensor's name belongs to: the longest one its module path ends with."""
    module = name.split(".lora_")[0].replace(".base_layer", "")
    return max((g for g in groups if module == g or module.endswith(f".{g}")), key=len, default=module)


def min_cosine_by_target(grads: dict, truth: dict, groups: tuple[str, ...]) -> dict[str, float]:
    cosine: dict[str, float] = {}
    for name, g in grads.items():
        c = F.cosine_similarity(g, truth[name], dim=0).item() if g.norm() > 0 else 0.0
        t = target_of(name, groups)
        cosine[t] = round(min(cosine.get(t, 1.0), c), 5)
    return cosine


def parity(
    family: str, precision: str, base: Callable[[], torch.nn.Module] | None = None, batch: int = 4, seq: int = 512
) -> dict:
    """Fused on CUDA in `precision` vs the reference path in fp32 on the CPU, on `base()` (the same weights at
    every call; the bench's `make` by default). The reference runs on the CPU because on CUDA a family's own
    forward takes kernels of its own (transformers' Mamba-2 calls causal_conv1d, which refuses in_proj
    widths that are not multiples of 8), and its fp32 is the truth both precisions are held to."""
    base = base or (lambda: make(family))
    model = lora_model(base(), family, precision)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch, seq), device=DEV, generator=torch.Generator(DEV).manual_seed(0))
    fused_logits, fused_grads = run(model, ids, precision, "auto")
    eval_logits, _ = run(model, ids, precision, "auto", train=False)
    reference = lora_model(base(), family, "fp32", device="cpu")  # built first: building loads the kernels
    with kernels_hidden():
        ref_logits, ref_grads = run(reference, ids.cpu(), "fp32", "reference")
    fused_logits, eval_logits = fused_logits.cpu(), eval_logits.cpu()
    fused_grads = {name: g.cpu() for name, g in fused_grads.items()}
    return dict(
        family=family,
        precision=precision,
        max_logit_diff=round((fused_logits - ref_logits).abs().max().item(), 5),
        logit_scale=round(ref_logits.abs().max().item(), 3),
        train_vs_eval_max_diff=round((fused_logits - eval_logits).abs().max().item(), 6),
        min_lora_grad_cosine=min_cosine_by_target(fused_grads, ref_grads, GROUPS[family]),
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
