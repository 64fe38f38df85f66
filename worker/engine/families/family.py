"""What the engine needs of a model family beyond its catalog entry (app/families/): its
torch classes, the mixer forward `install_forwards` gives it, where its backbone and norms are, and how to
build a random-init config of it. Each family fills one `FamilyEngine` in its own module of this package."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from app.families import FAMILIES
from app.families.family import Family, ModelShape
from worker.engine.documents import hybrid_documents, mixer_documents

# (mixer, hidden (b, l, d_model), attention_mask, *, path: ForwardPath, seq_idx=None, **kwargs) -> (b, l, d_model)
MixerForward = Callable[..., Tensor]

# The kinds of a block's parts: an SSM mixer, self-attention, a dense MLP, a mixture of experts.
LAYER_KINDS = ("ssm", "attention", "mlp", "moe")


@dataclass(frozen=True, kw_only=True)
class FamilyEngine:
    model_type: str
    causal_lm: type[PreTrainedModel]
    # The SSM mixers (a hybrid's attention and MLP layers are not among them), in the classes transformers uses.
    mixers: tuple[type[nn.Module], ...]
    mixer_forward: MixerForward
    # Our fused residual + RMSNorm layer loop replaces this backbone's forward (None: the model's own loop),
    # returning `backbone_output`.
    fused_backbone: type[nn.Module] | None
    backbone_output: type | None
    # Δ (b, l, channels) of a mixer's recurrence, from its input hidden (b, l, d_model), in fp32.
    delta: Callable[[nn.Module, Tensor], Tensor]
    d_inner: Callable[[PretrainedConfig], int]
    # (kept, backward) copies of a layer's fp32 scan states per token on the torch path (memory.py).
    scan_copies: tuple[float, float]
    # Copies per token a chunked scan keeps of its fp32 intra-chunk scores and decays, heads x chunk_size
    # elements each (Mamba-2's SSD), on the torch path (memory.py).
    chunk_score_copies: float = 0.0
    # Elements of d_inner per token that a mixer keeps (and its backward holds) on CUDA, in the activation
    # dtype: Mamba's fused mixer at the 1.4B shape (memory.py); a family whose mixers take another route
    # on CUDA measures its own.
    cuda_channel_elements: float = 5.0
    build_config: Callable[[ModelShape, int, dict[str, Any]], PretrainedConfig]
    # Where the layers are: by default a stack of SSM blocks as Mamba's and Mamba-2's (the causal LM's
    # `backbone`, its `layers`, each block's `mixer`, the final `norm_f`); the hybrids say otherwise.
    backbone: Callable[[nn.Module], nn.Module] = lambda lm: lm.backbone  # causal LM -> the layers below its head
    final_norm: Callable[[nn.Module], nn.Module] = lambda backbone: backbone.norm_f  # backbone -> its last RMSNorm
    layers: Callable[[nn.Module], Sequence[nn.Module]] = lambda backbone: backbone.layers  # its blocks, in order
    # A block's parts by kind (LAYER_KINDS): what a job's adapter counts and the stability report go by.
    # A pure SSM block is {"ssm": mixer}; a hybrid's blocks hold attention, an MLP or experts (or several).
    layer_parts: Callable[[nn.Module], dict[str, nn.Module]] = lambda block: {"ssm": block.mixer}
    # Parameter name suffixes of the norms, which stay fp32 under bf16: the blocks' and the final one.
    norm_weights: tuple[str, ...] = ("norm.weight", "norm_f.weight")
    # The SSM's state size, from the config (the hybrids name the field otherwise).
    d_state: Callable[[PretrainedConfig], int] = lambda config: config.state_size
    # The factor the causal LM multiplies lm_head's output by (Falcon-H1's muP lm_head_multiplier), which
    # the trainer's loss applies as it computes the logits itself (loss.py).
    logits_scale: Callable[[PretrainedConfig], float] = lambda config: 1.0
    # Training keeps packed documents apart (worker/engine/documents.py) by calling the backbone with these
    # arguments for packed documents `seq_idx` (b, l), its attention's mask in `mask_dtype` (None:
    # boolean): `seq_idx` alone for our layer loop (mamba_forward.backbone_forward), which hands it to every mixer;
    # a hybrid's own loop takes its attention's positions and mask too (documents.hybrid_documents).
    backbone_kwargs: Callable[[Tensor, torch.dtype | None], dict[str, Tensor]] = mixer_documents
    # A block class of the model's own loop and the forward `install_forwards` gives it in place of its own
    # (kept as `hf_forward`), where the model's own does not hand `seq_idx` on to its mixer (Jamba's Mamba
    # blocks): (block, hidden, *args, **kwargs) -> what the block's own returns.
    block_forward: tuple[type[nn.Module], Callable[..., Any]] | None = None

    @property
    def catalog(self) -> Family:
        """The family's catalog entry, which the API reads too."""
        return FAMILIES[self.model_type]

    @property
    def keep_fp32(self) -> tuple[str, ...]:
        """Parameter name suffixes that stay fp32 even when frozen under bf16: the SSM's own and the norms."""
        return tuple(f".{name}" for name in (*self.catalog.ssm_params, *self.norm_weights))


def hybrid_engine(mixer: FamilyEngine, **fields: Any) -> FamilyEngine:
    """A hybrid family's engine: `mixer`'s (Mamba's or Mamba-2's) mixer forward, Δ and scan, in the model's own
    layer loop (the causal LM's base model and its `layers`), which hands packed documents to its mixers and
    its attention (documents.hybrid_documents); `fields` fill or replace the rest."""
    defaults: dict[str, Any] = {
        "fused_backbone": None,
        "backbone_output": None,
        "backbone": lambda lm: lm.base_model,
        "layers": lambda backbone: backbone.layers,
        "backbone_kwargs": hybrid_documents,
    }
    return replace(mixer, **{**defaults, **fields})
