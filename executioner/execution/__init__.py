"""Running jobs: the worker loop, its claim walk, one try of a command, the retry policy,
filesystem events, and detached local workers."""
