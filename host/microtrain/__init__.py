"""microtrain on the host: one folder per stage of the data path.

    model/    the int8 model (QModel), its fixed-point parameters, the model file (.mtm)
    convert/  TFLite int8 and float ONNX models -> QModel (floatnet: the float network, PTQ)
    plan/     the weight split and backward plan for a board's memory (the arena layout)
    sim/      the numpy reference of every kernel and the step-for-step simulator of the board
    device/   boards, the raw-REPL session (push/pull), the framed serial link, the virtual board
    cli/      the `microtrain` command, the demo, telemetry reports
    board/    the board library itself (firmware/microtrain): the formats host and board share
    datasets  real sample sets from installed packages, and per-device distortions

Research code (reference models, accuracy experiments) lives outside the package, in research/.
"""

from importlib.metadata import version as _version

# one version for host and board: the board library's __version__, which pyproject.toml reads
__version__ = _version("microtrain")
