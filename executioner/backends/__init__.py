"""Schedulers reached through submitit: Slurm worker arrays and the Slurm-DAG backend."""
