"""Lyapunov stability of Mamba's recurrence, analytic and empirical (Halloran et al., arXiv 2406.00209)."""
