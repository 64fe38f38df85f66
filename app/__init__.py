"""mambaft HTTP API. Never imports torch: the worker owns all model code."""
