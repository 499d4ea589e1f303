"""Split training between a board and the host (docs/split.md).

  plan/split.py     where to cut: the board's part must fit its budget, the host takes the rest
  split/host.py     the host's layers: integer (bit-identical with the simulator) or float
  split/session.py  the serial session: the board's activations up, the host's gradients down
  split/fed.py      several boards at once, their host-side layers aggregated (SplitFed)
"""
