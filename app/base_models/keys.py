"""Where a created model's objects live in storage: shared by the worker (writes) and any reader."""


def model_key(uid: str) -> str:
    """The packed HF folder (weights, config, tokenizer) of the created model with this uid."""
    return f"models/{uid}/model.tar.gz"
