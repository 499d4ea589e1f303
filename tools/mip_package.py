"""Write the mip package.json of one dist/<arch>_6.3 directory (every .mpy / .py in it)."""

import json
import os
import sys

from microtrain.board import __version__


def main(directory):
    files = sorted(f for f in os.listdir(directory) if f.endswith((".mpy", ".py")))
    json.dump({"urls": [[f, f] for f in files], "version": __version__}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
