"""microtrain host package: converters, planner, numpy reference/simulator, serial link, CLI."""

__version__ = "0.1.0"
