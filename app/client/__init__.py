"""The `mambaft` client commands (files, jobs, models, eval): HTTP to a running server, never its code."""
