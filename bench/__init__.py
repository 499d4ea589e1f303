"""`make bench`: kernels (Cortex-M0+ cycle model), training (accuracy, memory), link, board."""

import json
import os


def write_records(path, records):
    """The bench's records as a JSON list at path (the figures the docs quote)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
        f.write("\n")
