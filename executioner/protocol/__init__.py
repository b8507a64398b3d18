"""The on-disk format and every move of a job file: layout (every path), fsio (checked
writes), store (transition), fence (leaving running/), scrub (broken files), attempts,
rebuild (lost jobs)."""
