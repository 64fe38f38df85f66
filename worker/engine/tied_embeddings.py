"""Input embeddings and output head that share one weight (`tie_word_embeddings`), under a merged adapter.

An adapter on the head (or on the embeddings) changes what that one layer computes; merged into the weight both
share, it would move the other layer too. The merged model therefore gets a head of its own first, and its config
says so, so that saving and loading keep both weights. That flag also drives every other tie transformers makes on
load (Zamba2's shared blocks), so the merged model then keeps a copy of each weight it shares: saving drops the
aliases of a shared weight, and only a tie on load would bring them back. A loaded base that served such a merge is
tied again afterwards.
"""

from peft.tuners.lora import LoraLayer
from torch import nn

from worker.engine.lora_weights import base_layer


def embeddings_tied(model: nn.Module) -> bool:
    """Whether the output head reads the input embeddings' weight itself (a PeftModel or a plain HF model)."""
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and embeddings is not None and base_layer(head).weight is base_layer(embeddings).weight


def adapter_on_tied_embeddings(model: nn.Module) -> bool:
    """Whether an adapter targets the head or the embeddings while the two share their weight."""
    adapted = isinstance(model.get_output_embeddings(), LoraLayer) or isinstance(
        model.get_input_embeddings(), LoraLayer
    )
    return adapted and embeddings_tied(model)


def untie_head(model: nn.Module) -> None:
    """Give the output head a copy of the shared weight; the config then ties nothing."""
    head = base_layer(model.get_output_embeddings())
    head.weight = _copy(head.weight)
    model.config.tie_word_embeddings = False


def copy_shared_weights(model: nn.Module) -> None:
    """Give every module its own copy of each parameter it shares with an earlier one (what no config ties)."""
    seen: set[int] = set()
    for _, module in model.named_modules(remove_duplicate=False):
        for name, param in list(module.named_parameters(recurse=False)):
            if id(param) in seen:
                setattr(module, name, _copy(param))
            seen.add(id(param))


def tie_again(model: nn.Module) -> None:
    """Tie what the model's class ties (head and embeddings, shared blocks), to the weights it ties them to."""
    model.config.tie_word_embeddings = True
    model.tie_weights()


def _copy(param: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
