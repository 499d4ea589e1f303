# User C module (make-based ports: unix, and our firmware/hostport and emulated boards):
#   make USER_C_MODULES=<path to native_modules> ...
MTKERNELS_DIR := $(USERMOD_DIR)

SRC_USERMOD_C += $(MTKERNELS_DIR)/mtkernels.c
SRC_USERMOD_LIB_C += $(addprefix $(MTKERNELS_DIR)/kernels/, \
	mt_fixedpoint.c mt_dot.c mt_requant.c mt_conv.c mt_depthwise.c mt_pool.c mt_elementwise.c mt_update.c mt_crc32.c)

CFLAGS_USERMOD += -I$(MTKERNELS_DIR)
# Cortex-M0/M0+ firmware: set MTKERNELS_ARMV6M_ASM=1 to use the hand-written micro-kernels
# (kernels/*_armv6m.S: dot products, requantization runs, SGD steps).
ifeq ($(MTKERNELS_ARMV6M_ASM),1)
# (py.mk has no variable for user-module assembly; mkrules.mk assembles it via its vpath)
PY_O += $(addprefix $(BUILD)/$(patsubst $(USER_C_MODULES)/%,%,$(MTKERNELS_DIR))/kernels/, \
	mt_dot_armv6m.o mt_requant_armv6m.o mt_update_armv6m.o)
CFLAGS_USERMOD += -DMT_ARMV6M_ASM
endif

# The kernels are hot loops: -O2 even in -Os firmware builds (-Os costs 1.4-2x on the M0+).
$(BUILD)/$(patsubst $(USER_C_MODULES)/%,%,$(MTKERNELS_DIR))/kernels/%.o: CFLAGS += -O2 -fno-tree-loop-distribute-patterns
