"""A family is one catalog module (app/families/) and one engine module (worker/engine/families/) of the
same name, and nothing else of the service spells it out: both sides read it from there."""

import ast
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.families import FAMILIES, hub_family
from worker.engine.families import ENGINES, engine_of, ssm_mixers
from worker.engine.mamba_forward import install_forwards
from worker.engine.tiny_model import create_tiny_model

ROOT = Path(__file__).resolve().parents[2]
# Where a family's name may still be spelled: the shipped tiny models are a choice of families to ship.
MAY_NAME_A_FAMILY = {Path("worker/bootstrap.py")}


def _family_modules(package: Path) -> set[str]:
    return {p.stem for p in package.glob("*.py")} - {"__init__", "family"}


def test_the_catalog_and_the_engine_registry_name_the_same_families() -> None:
    assert set(FAMILIES) == set(ENGINES) and len(FAMILIES) >= 2
    for model_type, engine in ENGINES.items():
        assert engine.model_type == model_type and engine.catalog is FAMILIES[model_type]
        assert engine.causal_lm.config_class.model_type == model_type


def test_a_family_is_one_catalog_module_and_one_engine_module() -> None:
    assert _family_modules(ROOT / "app" / "families") == set(FAMILIES)
    assert _family_modules(ROOT / "worker" / "engine" / "families") == set(FAMILIES)
    homes = {Path("app/families") / f"{t}.py" for t in FAMILIES} | {
        Path("worker/engine/families") / f"{t}.py" for t in FAMILIES
    }
    spelled = []
    for package in ("app", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative in homes | MAY_NAME_A_FAMILY:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in FAMILIES:
                    spelled.append(f"{relative}:{node.lineno} {node.value!r}")
    assert spelled == [], "a family's name outside its two modules"


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_a_familys_tiny_model_has_what_its_entries_name(model_type: str, tmp_path: Path) -> None:
    family, engine = FAMILIES[model_type], ENGINES[model_type]
    model = install_forwards(AutoModelForCausalLM.from_pretrained(create_tiny_model(tmp_path, model_type)))
    names = {name.rpartition(".")[2] for name, _ in model.named_modules()}
    # A parameter target is a parameter's name below its module ("experts.up_proj").
    names |= {".".join(name.split(".")[-2:]) for name, _ in model.named_parameters()}
    assert set(family.lora_targets) <= names
    blocks = engine.layers(engine.backbone(model))
    assert len(blocks) == model.config.num_hidden_layers
    ssm_blocks = [parts["ssm"] for parts in map(engine.layer_parts, blocks) if "ssm" in parts]
    assert ssm_mixers(model) == ssm_blocks and all(isinstance(m, engine.mixers) for m in ssm_blocks)
    stock = {n.rpartition(".")[2] for n, _ in ssm_mixers(model)[0].named_parameters()}
    assert any(p.rpartition(".")[2] in stock for p in family.ssm_params)
    assert engine_of(model) is engine and isinstance(engine.final_norm(engine.backbone(model)), torch.nn.Module)
    hidden = engine.backbone(model)(input_ids=torch.tensor([[1, 2, 3]]), use_cache=False)[0]
    assert hidden.shape == (1, 3, model.config.hidden_size)


@pytest.mark.parametrize(
    ("model_id", "family"),
    [
        ("ibm-ai-platform/Bamba-9B-v2", "bamba"),
        ("state-spaces/mamba-130m-hf", "mamba"),
        ("state-spaces/mamba2-130m", "mamba2"),
        ("someone/Mamba-2-small", "mamba2"),
        ("nvidia/NVIDIA-Nemotron-Nano-9B-v2", "nemotron_h"),
        ("nvidia/Nemotron-H-8B-Base-8K", "nemotron_h"),
        ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", "nemotron_h"),
        ("tiiuae/Falcon-H1-0.5B-Base", "falcon_h1"),
        ("ai21labs/AI21-Jamba-Mini-1.5", "jamba"),
        ("ibm-granite/granite-4.0-h-tiny", "granitemoehybrid"),
        ("Zyphra/Zamba2-1.2B-instruct", "zamba2"),
        ("openai-community/gpt2", None),
    ],
)
def test_a_hub_id_names_the_family_whose_longest_mark_it_holds(model_id: str, family: str | None) -> None:
    assert hub_family(model_id) == family


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
@pytest.mark.parametrize("path", ["torch", "reference"])
def test_the_forwards_installed_compute_the_models_own_function(model_type: str, path: str, tmp_path: Path) -> None:
    folder = create_tiny_model(tmp_path, model_type)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    stock, ours = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoModelForCausalLM.from_pretrained(folder)
    # Falcon-Mamba's Δ norm is where mamba-ssm's kernel puts it, not where transformers' CPU forward does
    # (test_falcon_mamba.py); without it the two compute the same function.
    for model in (stock, ours):
        for mixer in ssm_mixers(model):
            if hasattr(mixer, "dt_layernorm"):
                mixer.dt_layernorm = torch.nn.Identity()
    with torch.no_grad():
        expected = stock(ids, use_cache=False).logits
        ours = install_forwards(ours, path).eval()(ids).logits
    assert torch.allclose(ours, expected, rtol=0, atol=1e-4), (ours - expected).abs().max()
