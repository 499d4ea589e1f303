# Port-level manifest of the microtrain emulated board: firmware/manifest.py starts with
# include("$(PORT_DIR)/boards/manifest.py"), as for the rp2 and esp32 ports, and then freezes
# the board library (package("microtrain")).  Nothing else is frozen on this board.
