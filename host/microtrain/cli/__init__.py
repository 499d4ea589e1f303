"""The `microtrain` command (click); `microtrain.cli:main` is its entry point."""

from microtrain.cli.main import main  # noqa: F401
