"""Leased work: what jobs, evaluations and model builds share on their way from the API to a worker.

`models.py` holds the lease columns and the event table of kinds without their own; `lifecycle.py` the
state machine (transitions, events, the resend clock); `dispatch.py` the commit-then-send protocol.
Below both the API services and the worker, so it imports neither the HTTP stack nor torch.
"""
