"""Boards and talking to them: board definitions, the raw-REPL session (push, pull), the framed
serial link, the virtual board (MicroPython unix port on a pty), flashing firmware."""
