"""The project's shared folder (models, official firmware, tools) beside the checkout.

A clone elsewhere (CI clones main into a fresh folder) finds it beside the repository it was
cloned from; MICROTRAIN_SHARED overrides both.
"""

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shared_dir(sub):
    """<shared>/<sub> (e.g. "models", "firmware/rp2040"); FileNotFoundError naming it when absent."""
    roots = [os.environ.get("MICROTRAIN_SHARED"), os.path.join(os.path.dirname(REPO), "shared")]
    try:
        origin = subprocess.run(["git", "-C", REPO, "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and os.path.isdir(origin):                 # a clone of a local repository
        roots.append(os.path.join(os.path.dirname(os.path.abspath(origin)), "shared"))
    for r in roots:
        if r and os.path.isdir(os.path.join(r, sub)):
            return os.path.join(r, sub)
    raise FileNotFoundError(f"the shared folder's {sub} is not beside this checkout: set MICROTRAIN_SHARED "
                            f"to the folder that holds {sub}")
