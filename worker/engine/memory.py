"""How much memory one training step needs, how much the device has for it, and the check between them.

The estimate of a step's peak, in bytes, is the sum of:

    weights      every parameter at its stored dtype (frozen ones in bf16 under bf16)
    gradients    4 bytes per trainable parameter
    optimizer    AdamW's two moments: 8 bytes per trainable parameter
    casts        under bf16/fp16 autocast, a 2-byte copy of every parameter (cached for the step)
    workspace    WORKSPACE_BYTES: the allocator's caches, tokenized data, the first use of each kernel
    activations  each block by its kinds (families.model_layers): `kept` is what backward keeps of a block,
                 `backward` what its backward holds on top while it runs; the step holds every block's kept
                 and the largest backward. In memory-lean mode a block keeps only its input and residual
                 (tokens x d_model x (4 + activation bytes)), and one block at a time is recomputed: every
                 block's input plus the largest kept + backward. Plus the document mask of the attention
                 layers, b x l^2 x 1 byte (bool, sdpa) or 4 (float, eager), and the LM-head loss chunk:
                 min(tokens, CHUNK_TOKENS) x vocab x 14 bytes (loss.py).

times a safety factor (SAFETY, FUSED_SAFETY). A block's bytes, per token unless said:

    SSM mixer, CUDA kernels         kept and backward the family's cuda_channel_elements x d_inner elements
                                    of the activation dtype
    SSM mixer, torch scans          the family's scan_copies (kept, backward) x d_inner x d_state x 4: the
                                    chunked scans keep fp32 states several times over (SC/SO models scan
                                    complex states, twice that); Mamba-2's SSD keeps chunk_score_copies of its
                                    intra-chunk scores and decays too, num_heads x chunk_size x 4 (the CPU,
                                    and CUDA without mamba-ssm)
    attention, MLPs, experts        kept and backward PROJECTION_COPIES x the channels a token passes through
                                    (every linear map's inputs and outputs, LoRA's included; a mixture's
                                    experts_per_token experts) x the activation bytes
    attention scores, per row       sdpa: SDPA_MASK_BYTES x l^2 while one layer's backward runs (its float
                                    copy of the mask); eager: heads x l^2 x EAGER_SCORE_BYTES (kept, backward)

Calibration. cuda_channel_elements, 5 by default: bench/RESULTS.md's largest batches of the Mamba 1.4B shape on an
H100 (bf16: 75.5 GiB at 40 x 1024 tokens, 4.7 elements of d_inner per token and layer once the weights
and the loss chunk are taken off; fp32: 74.0 GiB at 21 x 1024, 4.2). With FUSED_SAFETY the estimate is
1.21x and 1.29x those peaks, so an 80 GB card admits batches up to 32 and 16 of the 40 and 21 that ran.
Falcon-Mamba's mixers run projections and norms in torch around the scan kernel on CUDA: its ~1B shape
(bench/step.py's `1b`, bf16, 8 x 1024) peaked at 20.17 GiB on an H200, 10.5 elements of d_inner per token and
layer, so it keeps 11. Every family's estimate at that shape against its measured peak: tests/engine/test_memory.py.
The torch-path constants: the peak RSS growth of real one-step CPU jobs (`python bench/memory.py`, tables
in bench/RESULTS.md; d128 x 4 tiny models of every family, fp32 and bf16, memory-lean on and off, 2,048
and 4,096 tokens). Mamba's scan_copies: over three runs of its whole selective scan as one function
(scan.py), mamba-tiny grew at most 1,298 MiB at 4,096 tokens (lean: 701 MiB); solving n_layer x kept + backward
and kept + backward gives about (3.5, 3.5), rounded up to (4, 4): 1.12x to 1.46x of every row's largest
growth. Mamba-2's: mamba2-tiny (4 heads of chunk 256) grew 124 KiB (lean 61), bamba with four Mamba-2 blocks
of 16 heads 348 KiB, nemotron_h's one block of 16 heads of chunk 128 73 KiB: the scores' copies fit the growth
with the heads, the states' what is left. Jamba's Mamba blocks (their norms, the model's own loop around them)
have copies of their own, fitted on jamba's rows.
SDPA_MASK_BYTES and EAGER_SCORE_BYTES: one attention layer's forward and backward alone (sdpa: 4 to 5
bytes per row and l^2; eager: 16 to 19 per row, head and l^2), and falcon_h1 with eager attention at
1 x 4,096 (1.4 GiB over sdpa: 90 bytes per l^2 for 4 layers of 4 heads). PROJECTION_COPIES: what the hybrids
grew beyond their mixers. Without SAFETY every estimate is 1.03x to 2.1x the measured growth (the most where
the fixed WORKSPACE_BYTES dominates a small step); SAFETY adds 25% on top.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from worker.engine.documents import attention_mask_dtype
from worker.engine.families import family_engine, model_layers
from worker.engine.loss import CHUNK_TOKENS
from worker.engine.spec import InsufficientMemory, Precision

GiB = 1024**3
# Over the estimate: more where it was fitted on the tiny models (torch scans) than on the 1.4B shape itself.
SAFETY = 1.25
FUSED_SAFETY = 1.1
# Share of the free memory a job may use: the rest is for the allocator's slack and, on the host, for
# other processes and the OS (a GPU is its worker's alone).
BUDGET_FRACTION = {"cpu": 0.8, "cuda": 0.95}
WORKSPACE_BYTES = 256 * 1024**2
LOSS_CHUNK_BYTES_PER_LOGIT = 14
PROJECTION_COPIES = 1
SDPA_MASK_BYTES = 4
EAGER_SCORE_BYTES = (5, 12)
# What a client can change to need less memory, said by every memory failure.
LOWER = (
    "lower hyperparameters.batch_size or hyperparameters.max_seq_len, or use precision bf16 or "
    "hyperparameters.activation_recompute true"
)


@dataclass(frozen=True)
class StepShape:
    """What a step's memory depends on besides the model: the job's knobs a client can lower."""

    batch_size: int
    seq_len: int
    precision: Precision
    activation_recompute: bool

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


@dataclass(frozen=True)
class LayerSize:
    """One block as the estimate counts it, read from its parts (families.model_layers)."""

    ssm: bool  # it runs an SSM mixer
    # Elements per token of its mixer's intra-chunk scores, heads x chunk_size (Mamba-2's chunked scan; 0: none).
    chunk_scores: int
    attention_heads: int  # its attention's query heads; 0: no attention
    # Channels a token passes through in the projections of its other parts (attention, MLPs, the experts
    # it is routed to, their LoRA adapters): every linear map's inputs and outputs, which backward keeps.
    channels: int

    @classmethod
    def of(cls, parts: dict[str, nn.Module], *, heads: int, experts_per_token: int) -> "LayerSize":
        others = [part for kind, part in parts.items() if kind != "ssm"]
        mixer = parts.get("ssm")
        linear = sum(m.in_features + m.out_features for p in others for m in p.modules() if isinstance(m, nn.Linear))
        # A mixture's experts are 3-D weights (experts, out, in), of which a token passes experts_per_token.
        experts = sum(w.shape[1] + w.shape[2] for p in others for w in p.parameters() if w.dim() == 3)
        return cls(
            ssm=mixer is not None,
            chunk_scores=getattr(mixer, "num_heads", 0) * getattr(mixer, "chunk_size", 0),
            attention_heads=heads if "attention" in parts else 0,
            channels=linear + experts_per_token * experts,
        )


@dataclass(frozen=True)
class ModelSize:
    """The model's parameters and layer shapes, as the estimate reads them."""

    weight_bytes: int
    parameters: int
    trainable: int
    layers: tuple[LayerSize, ...]
    d_model: int
    d_inner: int
    d_state: int
    vocab: int
    family: str
    complex_states: bool  # SC/SO: the scan's states are complex
    # The fused CUDA kernels run; else a torch scan (the family's scan_copies).
    fused: bool
    # Eager attention materialises every head's (l, l) scores; sdpa does not. The bytes of one element of the
    # (b, 1, l, l) document mask it reads (documents.attention_mask_dtype): bool for sdpa, float for eager.
    eager_attention: bool
    mask_element_bytes: int

    @classmethod
    def of(cls, model: nn.Module, *, family: str, fused: bool) -> "ModelSize":
        config = model.config
        params = list(model.parameters())
        complex_states = (getattr(config, "ssm_structure", None) or "diagonal") != "diagonal"
        mask_dtype = attention_mask_dtype(config)
        heads, experts_per_token = getattr(config, "num_attention_heads", 0), getattr(config, "num_experts_per_tok", 1)
        return cls(
            weight_bytes=sum(p.numel() * p.element_size() for p in params),
            parameters=sum(p.numel() for p in params),
            trainable=sum(p.numel() for p in params if p.requires_grad),
            layers=tuple(
                LayerSize.of(parts, heads=heads, experts_per_token=experts_per_token)
                for _, parts in model_layers(model)
            ),
            d_model=config.hidden_size,
            d_inner=family_engine(family).d_inner(config),
            d_state=family_engine(family).d_state(config),
            vocab=config.vocab_size,
            family=family,
            complex_states=complex_states,
            fused=fused and not complex_states,  # SC/SO models scan in torch on the GPU too
            eager_attention=mask_dtype is not None,
            mask_element_bytes=1 if mask_dtype is None else mask_dtype.itemsize,
        )


@dataclass(frozen=True)
class LayerBytes:
    """What one block holds in a step: `kept` for backward, `backward` on top while its backward runs; each
    per token and per (l x l) of a row (attention's scores)."""

    kept: float
    backward: float
    kept_square: float
    backward_square: float

    def at(self, shape: "StepShape") -> tuple[float, float]:
        """(kept, backward) bytes of the block in a step of `shape`."""
        square = shape.batch_size * shape.seq_len**2
        return shape.tokens * self.kept + square * self.kept_square, (
            shape.tokens * self.backward + square * self.backward_square
        )


def layer_bytes(size: ModelSize, layer: LayerSize, precision: Precision) -> LayerBytes:
    """The bytes of one block: its SSM scan, its attention's scores, its other parts' projections."""
    kept = backward = kept_square = backward_square = 0.0
    if layer.ssm:
        kept, backward = _scan_bytes(size, layer, precision)
    projections = PROJECTION_COPIES * layer.channels * _activation_bytes(precision)
    kept, backward = kept + projections, backward + projections
    if layer.attention_heads:
        if size.eager_attention:
            kept_square, backward_square = (layer.attention_heads * c for c in EAGER_SCORE_BYTES)
        else:
            backward_square = SDPA_MASK_BYTES
    return LayerBytes(kept, backward, kept_square, backward_square)


def _scan_bytes(size: ModelSize, layer: LayerSize, precision: Precision) -> tuple[float, float]:
    """(kept, backward) bytes per token of an SSM mixer, by the scan that runs."""
    engine = family_engine(size.family)
    if size.fused:
        per_token = engine.cuda_channel_elements * size.d_inner * _activation_bytes(precision)
        return per_token, per_token
    states = size.d_inner * size.d_state * (8 if size.complex_states else 4)
    kept, backward = engine.scan_copies
    return kept * states + engine.chunk_score_copies * layer.chunk_scores * 4, backward * states


def activation_bytes(size: ModelSize, shape: StepShape) -> int:
    layers = [layer_bytes(size, layer, shape.precision).at(shape) for layer in size.layers]
    if shape.activation_recompute:
        inputs = shape.tokens * len(layers) * size.d_model * (4 + _activation_bytes(shape.precision))
        held = inputs + max(kept + backward for kept, backward in layers)
    else:
        held = sum(kept for kept, _ in layers) + max(backward for _, backward in layers)
    # The document mask every attention layer reads, one per step.
    mask = (
        shape.batch_size * shape.seq_len**2 * size.mask_element_bytes
        if any(layer.attention_heads for layer in size.layers)
        else 0
    )
    loss_chunk = min(shape.tokens, CHUNK_TOKENS) * size.vocab * LOSS_CHUNK_BYTES_PER_LOGIT
    return math.ceil(held) + mask + loss_chunk


def step_bytes(size: ModelSize, shape: StepShape) -> int:
    """The estimated peak of one training step, its safety factor included."""
    casts = 2 * size.parameters if shape.precision != "fp32" else 0
    state = size.weight_bytes + 12 * size.trainable + casts + WORKSPACE_BYTES
    return math.ceil((FUSED_SAFETY if size.fused else SAFETY) * (state + activation_bytes(size, shape)))


def _activation_bytes(precision: Precision) -> int:
    return 4 if precision == "fp32" else 2


def check_fits(size: ModelSize, shape: StepShape, budget: int, device: torch.device) -> None:
    """Raise InsufficientMemory, naming what to lower, when one step would need more than `budget`."""
    need = step_bytes(size, shape)
    if need <= budget:
        return
    fits = [f"{hint} fits" for hint in _smaller_shapes(size, shape, budget)]
    where = "GPU memory" if device.type == "cuda" else "RAM"
    raise InsufficientMemory(
        f"one training step needs an estimated {need / GiB:.1f} GiB (batch_size {shape.batch_size} x "
        f"max_seq_len {shape.seq_len}, {shape.precision}, activation_recompute "
        f"{str(shape.activation_recompute).lower()}) but this worker has {budget / GiB:.1f} GiB of {where} "
        f"for it; {LOWER}" + (f" ({'; '.join(fits)})" if fits else "")
    )


def _smaller_shapes(size: ModelSize, shape: StepShape, budget: int) -> Iterator[str]:
    """For each knob on its own, the others unchanged, a value that fits: the largest batch_size, the
    largest halving of max_seq_len, recompute on, bf16 for fp32."""
    if batch := next(
        (b for b in range(shape.batch_size - 1, 0, -1) if step_bytes(size, replace(shape, batch_size=b)) <= budget),
        None,
    ):
        yield f"batch_size {batch}"
    seq_len = shape.seq_len // 2
    while seq_len >= 16 and step_bytes(size, replace(shape, seq_len=seq_len)) > budget:
        seq_len //= 2
    if seq_len >= 16:
        yield f"max_seq_len {seq_len}"
    if not shape.activation_recompute and step_bytes(size, replace(shape, activation_recompute=True)) <= budget:
        yield "activation_recompute true"
    if shape.precision == "fp32" and step_bytes(size, replace(shape, precision="bf16")) <= budget:
        yield "precision bf16"


def device_budget(device: torch.device) -> int:
    """Bytes a job may use on `device`: BUDGET_FRACTION of its free GPU memory, or of the host's RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Blocks the caching allocator kept from an earlier job are free to this one, not to the driver.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int((free + cached) * BUDGET_FRACTION["cuda"])
    return int(host_available_bytes() * BUDGET_FRACTION["cpu"])


def host_available_bytes() -> int:
    """RAM this process can still take: the kernel's MemAvailable, or less where a cgroup limit is closer.

    Page cache the cgroup would reclaim (inactive files) does not count as used."""
    available = _meminfo()["MemAvailable"]
    for limit_file, usage_file, stat_file, inactive in CGROUP_FILES:
        limit, usage = _read_int(CGROUP_ROOT / limit_file), _read_int(CGROUP_ROOT / usage_file)
        if limit is None or usage is None or limit >= available + usage:  # "max", or no closer than the host
            continue
        reclaimable = _stat(CGROUP_ROOT / stat_file).get(inactive, 0)
        available = min(available, max(0, limit - usage + reclaimable))
    return available


CGROUP_ROOT = Path("/sys/fs/cgroup")
# (limit, usage, stats, the stats' reclaimable page cache) of cgroup v2, then v1.
CGROUP_FILES = (
    ("memory.max", "memory.current", "memory.stat", "inactive_file"),
    ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
)


def _meminfo() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024  # kB
    return fields


def _stat(path: Path) -> dict[str, int]:
    try:
        return {key: int(value) for key, value in (line.split() for line in path.read_text().splitlines())}
    except (OSError, ValueError):
        return {}


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):  # absent, or "max" (no limit)
        return None


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation that failed: torch's OutOfMemoryError (CUDA), MemoryError, or the CPU allocator's
    RuntimeError, which torch raises without a type of its own."""
    return isinstance(error, torch.OutOfMemoryError | MemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )
