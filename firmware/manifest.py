# Freeze the microtrain board library into a MicroPython firmware (with the C kernels built in
# through USER_C_MODULES): see firmware/README.md.
#   make -C ports/rp2 BOARD=RPI_PICO USER_C_MODULES=<microtrain>/native_modules/micropython.cmake \
#        FROZEN_MANIFEST=<microtrain>/firmware/manifest.py
include("$(PORT_DIR)/boards/manifest.py")
package("microtrain")
