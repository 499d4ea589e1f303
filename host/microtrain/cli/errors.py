"""The CLI's one error boundary: every failure a user can meet becomes one line on stderr and
exit status 1; `microtrain --debug ...` (or MICROTRAIN_DEBUG=1) shows the traceback instead.

Expected failures (bad files, a board that does not answer, a plan that does not fit) have their
own message; anything else is a bug, said as such, with the exception's type and text.
"""

import os

import click


def describe(e):
    """The one line for an exception, or None for those click reports itself."""
    import json
    import struct
    import zipfile
    try:
        from microtrain.board.checkpoint import CheckpointError
    except ImportError:
        CheckpointError = ()
    from microtrain.board.modelfile import ModelFileError
    if isinstance(e, ModelFileError):
        return f"model file: {e}"
    if isinstance(e, CheckpointError):
        return f"checkpoint: {e}"
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON: {e}"
    if isinstance(e, (zipfile.BadZipFile, struct.error, EOFError)):
        return f"unreadable file ({type(e).__name__}: {e})"
    try:
        from mpremote.transport import TransportError, TransportExecError
        from serial import SerialException
    except ImportError:                          # pragma: no cover - pinned dependencies
        TransportError = TransportExecError = SerialException = ()
    if isinstance(e, TransportExecError):
        text = (e.error_output or str(e)).strip().splitlines()
        return f"the board raised: {text[-1] if text else e}"
    if isinstance(e, (TransportError, SerialException)):
        return f"serial link to the board: {e}"
    if isinstance(e, TimeoutError):
        return f"timed out: {e}" if str(e) else "timed out"
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}"
    if isinstance(e, (ValueError, RuntimeError, KeyError, LookupError)):
        return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e) or type(e).__name__
    return (f"internal error: {type(e).__name__}: {e} "
            "(a bug in microtrain: run with --debug for the traceback and please report it)")


def debugging(ctx):
    root = ctx.find_root()
    return bool(root.params.get("debug")) or os.environ.get("MICROTRAIN_DEBUG", "") not in ("", "0")


class Boundary(click.Group):
    """A click group whose sub-commands fail with one clear line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit,
                KeyboardInterrupt, GeneratorExit):
            raise
        except Exception as e:                   # noqa: BLE001 - this is the boundary
            if debugging(ctx):
                raise
            raise click.ClickException(describe(e)) from None
