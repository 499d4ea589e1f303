# microtrain — everything from a fresh clone:  make test  |  make demo  |  make bench
#
# `make setup` installs what the rest needs: Debian packages (arm-none-eabi-gcc, qemu, socat; only
# when missing, needs root), a venv with the pinned PyPI packages, and the MicroPython 1.23 core
# sources from the PyPI sdist of mpy-cross-v6-3 (no GitHub needed), and rp2040js (npm) for the
# emulated Pico.

SHELL := /bin/bash
.NOTPARALLEL:

PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
BUILD := $(abspath build)
DIST := $(abspath dist)
MPY_DIR := $(BUILD)/micropython
MPY_SDIST := mpy-cross-v6-3==1.1.1
APT_PACKAGES := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm socat
NATMOD_ARCHS := x64 armv6m armv7m
KERNEL_SRC := $(wildcard native_modules/mtkernels/kernels/*.c native_modules/mtkernels/kernels/*.S native_modules/mtkernels/kernels/*.h)
MODULE_SRC := $(KERNEL_SRC) native_modules/mtkernels/mtkernels.c native_modules/mtkernels/Makefile
HOSTPORT := $(BUILD)/hostport/micropython-host
MPY_CROSS := $(MPY_DIR)/mpy-cross/build/mpy-cross
BOARD_LIB_SRC := $(wildcard firmware/microtrain/*.py)
BOARD_LIB := $(patsubst firmware/%.py,$(DIST)/lib/%.mpy,$(BOARD_LIB_SRC))
HOST_KERNELS := $(BUILD)/host/libmtkernels_sanitized.so
RP2040JS := $(BUILD)/rp2040js/node_modules/rp2040js/package.json
SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

export MICROTRAIN_MPY_DIR := $(MPY_DIR)
export MICROTRAIN_DIST := $(DIST)
export MICROTRAIN_BUILD := $(BUILD)

.PHONY: all setup natmods board-lib package-data xtensawin hostport qemu-boards host-kernels test bench demo clean distclean

all: natmods

setup: $(BUILD)/.apt $(VENV)/.installed $(MPY_DIR)/py/py.mk $(RP2040JS)

$(BUILD)/.apt:
	@mkdir -p $(BUILD)
	@if ! command -v arm-none-eabi-gcc >/dev/null || ! command -v qemu-system-arm >/dev/null \
	    || ! command -v socat >/dev/null; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi
	@if ! command -v npm >/dev/null; then \
	  echo "installing Debian packages: nodejs npm (for rp2040js)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	fi
	@touch $@

# rp2040js (npm, pinned by firmware/rp2040/package-lock.json) for the emulated Pico
$(RP2040JS): firmware/rp2040/package.json firmware/rp2040/package-lock.json | $(BUILD)/.apt
	mkdir -p $(BUILD)/rp2040js && cp firmware/rp2040/package.json firmware/rp2040/package-lock.json $(BUILD)/rp2040js/
	cd $(BUILD)/rp2040js && npm ci --silent --no-audit --no-fund
	@touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev,plot,federated]'
	@# aeon only for the BasicMotions files it ships (its numba pin would downgrade numpy)
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps aeon==1.6.0
	@touch $@

$(MPY_DIR)/py/py.mk: | $(VENV)/.installed
	rm -rf $(BUILD)/sdist && mkdir -p $(BUILD)/sdist
	$(VENV)/bin/pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
	    -d $(BUILD)/sdist $(MPY_SDIST)
	tar -xzf $(BUILD)/sdist/*.tar.gz -C $(BUILD)/sdist
	rm -rf $(MPY_DIR) && mv $(BUILD)/sdist/*/micropython $(MPY_DIR)
	@touch $@

# ---- native modules: dist/<arch>_6.3/mtkernels.mpy + mip package.json ------------------------

natmods: setup $(foreach a,$(NATMOD_ARCHS),$(DIST)/$(a)_6.3/mtkernels.mpy $(DIST)/$(a)_6.3/package.json) xtensawin board-lib \
         package-data

$(DIST)/%_6.3/mtkernels.mpy: $(MODULE_SRC) | $(MPY_DIR)/py/py.mk
	$(MAKE) -s -C native_modules/mtkernels MPY_DIR=$(MPY_DIR) ARCH=$* BUILD=$(BUILD)/natmod/$* PYTHON=$(PY)
	@mkdir -p $(@D) && mv native_modules/mtkernels/mtkernels.mpy $@

$(DIST)/%_6.3/package.json: tools/mip_package.py
	@mkdir -p $(@D) && $(PY) tools/mip_package.py $(@D) > $@

xtensawin:
	@if command -v xtensa-esp32-elf-gcc >/dev/null; then \
	  $(MAKE) $(DIST)/xtensawin_6.3/mtkernels.mpy $(DIST)/xtensawin_6.3/package.json; \
	else \
	  echo "xtensawin (ESP32-S3): skipped, needs the ESP-IDF toolchain (xtensa-esp32-elf-gcc), not installed here"; \
	fi

# ---- the board library precompiled to bytecode: dist/lib/microtrain/*.mpy (any arch) ----------

board-lib: $(BOARD_LIB) $(DIST)/lib/microtrain/package.json

$(MPY_CROSS): | $(MPY_DIR)/py/py.mk
	$(MAKE) -s -C $(MPY_DIR)/mpy-cross PYTHON=$(PY) >/dev/null

$(DIST)/lib/microtrain/%.mpy: firmware/microtrain/%.py $(MPY_CROSS)
	@mkdir -p $(@D)
	$(MPY_CROSS) -s microtrain/$*.py -o $@ $<

$(DIST)/lib/microtrain/package.json: $(BOARD_LIB) tools/mip_package.py
	$(PY) tools/mip_package.py $(@D) > $@

# ---- what a pip-installed microtrain carries besides code (host/microtrain/data) --------------

PKG_DATA := host/microtrain/data
AEON_BM = $(shell $(PY) -c "import importlib.util as u; print(list(u.find_spec('aeon').submodule_search_locations)[0])")/datasets/data/BasicMotions

package-data: board-lib
	@rm -rf $(PKG_DATA)/dist $(PKG_DATA)/boards $(PKG_DATA)/examples $(PKG_DATA)/BasicMotions
	@mkdir -p $(PKG_DATA)/dist $(PKG_DATA)/boards $(PKG_DATA)/examples $(PKG_DATA)/BasicMotions
	@cp -r $(DIST)/lib $(DIST)/*_6.3 $(PKG_DATA)/dist/
	@cp boards/*.toml $(PKG_DATA)/boards/
	@cp examples/*.onnx $(PKG_DATA)/examples/
	@cp $(AEON_BM)/BasicMotions_TRAIN.ts $(AEON_BM)/BasicMotions_TEST.ts $(PKG_DATA)/BasicMotions/

# ---- the MicroPython host runner with the kernels built in as a user C module ---------------

hostport: $(HOSTPORT)

$(HOSTPORT): $(MODULE_SRC) native_modules/mtkernels/micropython.mk $(wildcard firmware/hostport/*) | setup
	$(MAKE) -s -C firmware/hostport MPY_DIR=$(MPY_DIR) BUILD=$(BUILD)/hostport \
	    USER_C_MODULES=$(abspath native_modules) PYTHON=$(PY)

# ---- the emulated boards: MicroPython on qemu-system-arm (Cortex-M0 256 KB, Cortex-M3) ------

qemu-boards: setup
	$(MAKE) -s -C firmware/qemuport BOARD=microbit both MPY_DIR=$(MPY_DIR) PYTHON=$(PY)
	$(MAKE) -s -C firmware/qemuport BOARD=mps2-an385 both MPY_DIR=$(MPY_DIR) PYTHON=$(PY)

# ---- the kernels as a host shared library with sanitizers (test tier 2) ---------------------

host-kernels: $(HOST_KERNELS)

$(HOST_KERNELS): $(KERNEL_SRC)
	@mkdir -p $(@D)
	gcc -std=c99 -O1 -g -Wall -Wextra -Werror -fPIC -shared $(SANITIZE) \
	    -o $@ $(filter %.c,$(KERNEL_SRC))

# ---- tests, benchmarks, demo ------------------------------------------------------------------

test: setup natmods hostport qemu-boards host-kernels
	$(PY) -m pytest -q -m "not sanitized" tests
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	    ASAN_OPTIONS=detect_leaks=0 $(PY) -m pytest -q --capture=sys -m sanitized tests

bench: setup natmods
	$(PY) -m bench.kernels
	$(PY) -m bench.training
	$(PY) -m bench.link
	$(PY) -m bench.board
	$(PY) -m bench.reliability
	$(PY) -m bench.pico
	$(PY) -m bench.federated --boards 100 --rounds 3
	$(PY) -m bench.federated --compare --rounds 5
	$(PY) -m bench.split
	$(PY) -m bench.adapt
	$(PY) -m bench.scale
	$(PY) -m bench.scale_pico
	$(PY) -m bench.reliability --board pico --rates 1e-3 --trials 1 --epochs 1 --deadline 120

demo: setup natmods
	$(VENV)/bin/microtrain demo --png demo-training.png

clean:
	rm -rf $(BUILD)/natmod $(BUILD)/hostport $(BUILD)/host $(DIST) native_modules/mtkernels/build \
	    $(PKG_DATA)/dist $(PKG_DATA)/boards $(PKG_DATA)/examples $(PKG_DATA)/BasicMotions

distclean: clean
	rm -rf $(BUILD) $(VENV)
