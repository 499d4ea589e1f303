/*
 * HAL interface of the microtrain emulated board (implemented in hal.c on top of
 * board.h).  The core HAL functions are declared by py/mphal.h.
 */
#ifndef MICROPY_INCLUDED_QEMUPORT_MPHALPORT_H
#define MICROPY_INCLUDED_QEMUPORT_MPHALPORT_H

#include "shared/runtime/interrupt_char.h"

// No GPIO pins: defining the pin type keeps py/mphal.h from pulling in
// extmod/virtpin.h.
#define mp_hal_pin_obj_t int

#endif // MICROPY_INCLUDED_QEMUPORT_MPHALPORT_H
