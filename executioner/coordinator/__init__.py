"""Changing a run: the coordinator lock, plans (what a resume would do), grab/stage/commit,
and creating a run."""
