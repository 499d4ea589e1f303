# Entry point for CMake-based MicroPython ports (rp2, esp32):
#   make -C ports/rp2 BOARD=RPI_PICO USER_C_MODULES=/path/to/native_modules/micropython.cmake
include(${CMAKE_CURRENT_LIST_DIR}/mtkernels/micropython.cmake)
