"""Mean token loss and perplexity of a model on a JSONL file, measured exactly like the trainer's
validation loss: the engine's data loader decides which tokens count (data.py), the trainer's
`evaluate` averages their cross-entropy, at the given precision."""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from worker.engine.data import IGNORE, load_blocks
from worker.engine.precision import PrecisionPolicy
from worker.engine.spec import InvalidDataFile, Precision
from worker.engine.trainer import evaluate


class InvalidValidationFile(InvalidDataFile):
    code = "invalid_validation_file"


@dataclass(frozen=True)
class FileLoss:
    mean_loss: float  # nats per scored token
    perplexity: float
    tokens: int  # scored (trained) target tokens


def file_loss(
    model: nn.Module,
    tokenizer: Any,
    path: Path,
    *,
    precision: Precision = "fp32",
    max_seq_len: int = 256,
    batch_size: int = 8,
) -> FileLoss:
    try:
        blocks = load_blocks(path, tokenizer, max_seq_len)
    except InvalidDataFile as error:
        raise InvalidValidationFile(str(error)) from None
    policy = PrecisionPolicy(precision, next(model.parameters()).device)
    loss = evaluate(model, blocks, batch_size, policy)
    return FileLoss(loss, math.exp(loss), int((blocks.targets != IGNORE).sum()))
