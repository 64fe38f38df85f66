"""Small factories for the worker and end-to-end tests: settings over a migrated database, stored
files and queued jobs as the API would write them, slices of the demo data, the CLI's environment."""

import io
import os
import socket
import sys
from pathlib import Path
from typing import Any

from app.db import new_id, now, session_scope
from app.files.models import File
from app.jobs.lifecycle import JobStatus
from app.jobs.models import Job
from app.migrate import upgrade_database
from app.settings import Settings
from app.storage import ObjectStorage

DEMO = Path(__file__).resolve().parents[2] / "demo"
# The console script `pip install` made beside this interpreter: what an operator runs.
MAMBAFT = str(Path(sys.executable).with_name("mambaft"))


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without the developer's own MAMBAFT_* settings, plus `values`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAMBAFT_")}
    return {**env, **values}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_slice(name: str, lines: int) -> bytes:
    """The first `lines` examples of a demo file: enough to learn from, few enough to train in seconds."""
    return ("\n".join((DEMO / name).read_text().splitlines()[:lines]) + "\n").encode()


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    settings = Settings(data_dir=data_dir, **overrides)
    upgrade_database(settings.database_url)
    return settings


def store_file(settings: Settings, storage: ObjectStorage, content: bytes, *, filename: str) -> str:
    file_id = new_id("file")
    key = f"files/{file_id}"
    storage.put_stream(key, io.BytesIO(content))
    with session_scope(settings.database_url) as session:
        session.add(
            File(
                id=file_id,
                owner="tester",
                filename=filename,
                purpose="fine-tune",
                bytes=len(content),
                created_at=now(),
                storage_key=key,
                format="prompt_completion",
                line_count=content.count(b"\n"),
            )
        )
    return file_id


def make_job(
    settings: Settings,
    storage: ObjectStorage,
    *,
    train_lines: int = 32,
    train_content: bytes | None = None,
    **overrides: Any,
) -> str:
    """A queued LoRA job on mamba-tiny over a slice of the demo data, as the API would store it."""
    train_content = train_content or demo_slice("train.jsonl", train_lines)
    training = store_file(settings, storage, train_content, filename="train.jsonl")
    validation = store_file(settings, storage, demo_slice("valid.jsonl", 16), filename="valid.jsonl")
    fields: dict[str, Any] = dict(
        id=new_id("ftjob"),
        owner="tester",
        model="mamba-tiny",
        training_file=training,
        validation_file=validation,
        precision="fp32",
        lora={"r": 4, "alpha": 8, "target_modules": ["in_proj", "x_proj"]},
        hyperparameters={"n_epochs": 1, "batch_size": 4, "learning_rate": 3e-3, "max_seq_len": 64},
        seed=0,
        status=JobStatus.QUEUED,
        created_at=now(),
        metrics={},
        current_step=0,
        attempts=0,
        cancel_requested=False,
    )
    fields.update(overrides)
    with session_scope(settings.database_url) as session:
        session.add(Job(**fields))
    return fields["id"]


def job_row(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def adapter_logits_change(models_dir: Path, adapter: Path) -> float:
    """How far a downloaded adapter folder, loaded with plain peft on mamba-tiny, moves its logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)  # shipped inside the archive
    inputs = tokenizer("reverse: abc =", return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(models_dir / "mamba-tiny")
    with torch.no_grad():
        before = base(input_ids=inputs).logits
        tuned = PeftModel.from_pretrained(base, adapter)
        after = tuned(input_ids=inputs).logits
    return (after - before).abs().max().item()


def random_adapter(base: Path, folder: Path, targets: tuple[str, ...] = ("in_proj", "dt_proj", "out_proj")) -> Path:
    """A LoRA adapter for the model at `base`, saved as a job saves one into `folder`, on `targets` (by default
    in_proj, and dt_proj and out_proj, which only folding or merging reaches) with random B and SSM parameters:
    it moves the logits as a trained one would, without the training."""
    import torch

    from worker.engine.loading import load_base
    from worker.engine.lora_fold import attach_lora, save_adapter
    from worker.engine.spec import LoraSpec

    model, _, _ = load_base(str(base), device=torch.device("cpu"))
    spec = LoraSpec(r=4, alpha=8, target_modules=targets, train_ssm_params=True)
    peft_model = attach_lora(model, spec)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or name.endswith("A_log"):
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    save_adapter(peft_model, folder)
    return folder
