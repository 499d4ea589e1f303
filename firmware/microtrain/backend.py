# The kernels microtrain runs on: the native module `mtkernels` (a .mpy in /lib or built into
# the firmware) when present, else the pure-Python twin with identical integer results.

try:
    import mtkernels as kernels
    NAME = "native"
except ImportError:
    from . import pykernels as kernels
    NAME = "python"


def use(name):
    """Select the backend ("native" or "python") before loading a model (tests, benchmarks)."""
    global kernels, NAME
    if name == "python":
        from . import pykernels as k
    elif name == "native":
        import mtkernels as k
    else:
        raise ValueError("backend must be 'native' or 'python'")
    kernels, NAME = k, name
    return k
