"""Webhooks: endpoints a tenant registers, and the signed deliveries of its jobs' and evaluations' state changes."""
