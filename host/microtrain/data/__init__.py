"""Files the tool needs besides its code: the board library and native modules (.mpy, made by
`make natmods`), the board definitions, the demo's pretrained model and its dataset.

In a checkout they are used where they are made (dist/, boards/, examples/); a pip-installed
package carries copies here (`make package-data` puts them in place before the wheel is built).
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))     # host/microtrain/data -> the checkout

# kind -> (environment override, folder in a checkout)
KINDS = {"dist": ("MICROTRAIN_DIST", "dist"), "boards": ("MICROTRAIN_BOARDS", "boards"),
         "examples": (None, "examples"), "BasicMotions": (None, None)}


def find(kind):
    """The folder of `kind`: the environment's, else the checkout's, else the package's copy;
    FileNotFoundError naming what to do when there is none."""
    env, sub = KINDS[kind]
    places = [os.environ.get(env) if env else None, os.path.join(CHECKOUT, sub) if sub else None,
              os.path.join(HERE, kind)]
    for p in places:
        if p and os.path.isdir(p) and os.listdir(p):
            return p
    raise FileNotFoundError(f"microtrain's {kind} files are missing (looked in {', '.join(p for p in places if p)}): "
                            "in a checkout run `make natmods`; an installed package is incomplete, reinstall it")
