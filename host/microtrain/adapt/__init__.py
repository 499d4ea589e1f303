"""Adaptation without backprop (docs/adapt.md): the board's anchors and forward-only methods
(`core`, the host's bit-exact reference of firmware/microtrain/adapt.py), the host's adaptors
(`adaptors`: head, correct, generator), the exchange with a board (`session`) and the device
scenarios on real data (`scenario`)."""
