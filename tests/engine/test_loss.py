"""The chunked loss equals the model's own loss, value and gradients."""

import torch

from tests.engine.test_lora_fold import VOCAB, make_model
from worker.engine.lora_fold import attach_lora
from worker.engine.loss import next_token_loss
from worker.engine.spec import LoraSpec


def test_chunked_loss_matches_the_models_own_loss_and_gradients():
    model = attach_lora(make_model("mamba"), LoraSpec(r=4, alpha=8, target_modules=("in_proj", "out_proj", "lm_head")))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :7] = -100  # a prompt that carries no loss
    model.train()
    expected = model(input_ids=ids, labels=labels).loss
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    # Targets already shifted: the model's own loss shifts labels by one inside.
    loss = next_token_loss(model, ids[:, :-1], labels[:, 1:], chunk_tokens=7)  # chunks split sequences
    loss.backward()
    assert torch.allclose(loss, expected, atol=1e-5)
    for name, grad in expected_grads.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, atol=1e-5), name
