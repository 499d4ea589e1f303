# User C module for CMake-based ports (rp2, esp32):
#   make USER_C_MODULES=<path to native_modules>/micropython.cmake
add_library(usermod_mtkernels INTERFACE)

set(MTKERNELS_KERNELS
    ${CMAKE_CURRENT_LIST_DIR}/kernels/mt_fixedpoint.c
    ${CMAKE_CURRENT_LIST_DIR}/kernels/mt_dot.c
    ${CMAKE_CURRENT_LIST_DIR}/kernels/mt_requant.c
    ${CMAKE_CURRENT_LIST_DIR}/kernels/mt_conv.c
    ${CMAKE_CURRENT_LIST_DIR}/kernels/mt_depthwise.c
    ${CMAKE_CURRENT_LIST_DIR}/kernels/mt_pool.c
    ${CMAKE_CURRENT_LIST_DIR}/kernels/mt_elementwise.c
    ${CMAKE_CURRENT_LIST_DIR}/kernels/mt_update.c
    ${CMAKE_CURRENT_LIST_DIR}/kernels/mt_crc32.c
)

target_sources(usermod_mtkernels INTERFACE
    ${CMAKE_CURRENT_LIST_DIR}/mtkernels.c
    ${MTKERNELS_KERNELS}
)

target_include_directories(usermod_mtkernels INTERFACE ${CMAKE_CURRENT_LIST_DIR})

# RP2040 (Cortex-M0+): the hand-written ARMv6-M micro-kernels replace kernels/mt_dot.c,
# mt_requant_run and mt_sgd_deltas
if(DEFINED PICO_PLATFORM AND PICO_PLATFORM STREQUAL "rp2040")
    target_sources(usermod_mtkernels INTERFACE
        ${CMAKE_CURRENT_LIST_DIR}/kernels/mt_dot_armv6m.S
        ${CMAKE_CURRENT_LIST_DIR}/kernels/mt_requant_armv6m.S
        ${CMAKE_CURRENT_LIST_DIR}/kernels/mt_update_armv6m.S)
    target_compile_definitions(usermod_mtkernels INTERFACE MT_ARMV6M_ASM)
endif()

# The kernels are hot loops: -O2 even in -Os firmware builds.
set_source_files_properties(${MTKERNELS_KERNELS} PROPERTIES COMPILE_OPTIONS "-O2;-fno-tree-loop-distribute-patterns")

target_link_libraries(usermod INTERFACE usermod_mtkernels)
