"""Runners execute a list of run specs against a store: ``inline`` (this process), and the
submitit-based ``local`` and ``slurm`` backends behind the same interface."""
