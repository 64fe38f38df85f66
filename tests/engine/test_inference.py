"""Completions on a worker: text stops where it should, adapters swap on a loaded base without leaving a
trace, the least recently used base is dropped first."""

import shutil
from pathlib import Path

import pytest
import torch

from e2e.factories import random_adapter
from worker.engine.data import chat_prompt, tokenize_record
from worker.engine.loading import load_base
from worker.engine.lora_fold import load_adapter
from worker.engine.tiny_model import byte_tokenizer
from worker.inference.generation import Sampling, StopScanner, generate
from worker.inference.loaded_models import LoadedModels

GREEDY = Sampling(max_tokens=12, temperature=0, top_p=1, stop=(), seed=None)


def test_stop_scanner_holds_back_a_possible_stop_and_cuts_before_one():
    scanner = StopScanner(("END",))
    assert scanner.feed("abc E") == "abc "  # "E" may begin END
    assert scanner.feed("abc EN") == ""
    assert scanner.feed("abc ENX") == "ENX"  # it did not
    assert scanner.feed("abc ENX yEND and more") == " y"
    assert scanner.stopped


def test_stop_scanner_waits_for_a_whole_character():
    scanner = StopScanner(())
    assert scanner.feed("caf\ufffd") == "caf"
    assert scanner.feed("café") == "é"


def _text(model, tokenizer, prompt: str, sampling: Sampling) -> tuple[str, str, int]:
    pieces: list[str] = []
    result = generate(model, tokenizer, tokenizer(prompt)["input_ids"], sampling, pieces.append)
    return "".join(pieces), result.finish_reason, result.completion_tokens


def test_generate_greedy_runs_to_max_tokens_then_stops_at_a_stop_string(tiny_mamba: Path):
    models = LoadedModels(capacity=1, device="cpu")
    model, tokenizer = models.get(tiny_mamba)
    text, reason, tokens = _text(model, tokenizer, "hello", GREEDY)
    assert (reason, tokens) == ("length", 12)
    assert _text(model, tokenizer, "hello", GREEDY)[0] == text  # greedy: the same every time
    stop = text.strip("\ufffd")[3:5]
    assert stop, f"greedy text too short to pick a stop from: {text!r}"
    cut, reason, _ = _text(model, tokenizer, "hello", Sampling(12, 0, 1, (stop,), None))
    assert (cut, reason) == (text[: text.index(stop)], "stop")


def test_sampling_with_a_seed_repeats_and_differs_from_greedy(tiny_mamba: Path):
    model, tokenizer = LoadedModels(capacity=1, device="cpu").get(tiny_mamba)
    sampled = Sampling(max_tokens=12, temperature=1.5, top_p=0.95, stop=(), seed=7)
    first = _text(model, tokenizer, "hello", sampled)[0]
    assert _text(model, tokenizer, "hello", sampled)[0] == first
    assert first != _text(model, tokenizer, "hello", GREEDY)[0]


@pytest.fixture(params=[("in_proj", "dt_proj", "out_proj"), ("in_proj", "lm_head")], ids=["mixer", "tied_head"])
def adapter(request: pytest.FixtureRequest, tiny_mamba: Path, tmp_path: Path) -> Path:
    return random_adapter(tiny_mamba, tmp_path / "adapter", request.param)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[104, 105, 33]])).logits


def test_an_adapter_swaps_in_and_out_leaving_the_base_bit_identical(tiny_mamba: Path, adapter: Path):
    models = LoadedModels(capacity=1, device="cpu")
    base, _ = models.get(tiny_mamba)
    weights = {name: value.clone() for name, value in base.state_dict().items()}
    base_logits = _logits(base)
    unmerged = load_adapter(load_base(str(tiny_mamba), device=torch.device("cpu"))[0], adapter).eval()

    tuned, _ = models.get(tiny_mamba, adapter)
    assert not torch.allclose(_logits(tuned), base_logits, atol=1e-3)
    assert torch.allclose(_logits(tuned), _logits(unmerged), atol=1e-5)
    assert models.loaded() == [(str(tiny_mamba), adapter)]

    restored, _ = models.get(tiny_mamba)
    for name, value in restored.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert torch.equal(_logits(restored), base_logits)
    assert restored.lm_head.weight is restored.backbone.embeddings.weight  # tied again, as loaded


def test_the_least_recently_used_base_is_dropped_first(tiny_mamba: Path, tiny_mamba2: Path, tmp_path: Path):
    third = shutil.copytree(tiny_mamba, tmp_path / "third")
    models = LoadedModels(capacity=2, device="cpu")
    models.get(tiny_mamba)
    models.get(tiny_mamba2)
    models.get(tiny_mamba)  # now mamba2 is the least recently used
    models.get(third)
    assert [base for base, _ in models.loaded()] == [str(tiny_mamba), str(third)]


def test_a_chat_prompt_is_the_training_rendering_up_to_the_answer():
    tokenizer = byte_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    trained, _ = tokenize_record({"messages": [*messages, {"role": "assistant", "content": "Hello."}]}, tokenizer)
    prompt = chat_prompt(messages, tokenizer)
    assert trained[: len(prompt)] == prompt
    assert tokenizer.decode(trained[len(prompt) :]) == "Hello.<|endoftext|>"
