"""Experiment trackers a job asked for in its `integrations` (W&B, MLflow), on workers that have them."""
