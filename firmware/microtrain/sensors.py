# On-board data acquisition: sensors that fill int8 samples of the model's input shape, and a
# recorder that labels them (from a button or from the host) and hands them to the trainer.
#
#   imu = sensors.MPU6050(machine.I2C(0, sda=machine.Pin(4), scl=machine.Pin(5)), rate_hz=50)
#   q = sensors.Quantizer.from_scale(m.in_scale, m.in_zp, raw_per_unit=[16384]*3 + [131]*3)
#   rec = sensors.Recorder(imu, q, frames=100)
#   rec.record(trainer, label=2)          # one sample: 100 frames x 6 channels -> a training step
#
# A sensor reads raw integer frames (one value per channel); the quantizer maps them to the
# model's int8 input with integer arithmetic only: q = clamp(((raw - offset) * mult >> shift) + zp).

try:
    import time

    sleep_us = time.sleep_us
    ticks_us = time.ticks_us
    ticks_diff = time.ticks_diff
except (ImportError, AttributeError):      # CPython (tests)
    import time

    def sleep_us(us):
        time.sleep(us / 1e6)

    def ticks_us():
        return int(time.monotonic() * 1e6)

    def ticks_diff(a, b):
        return a - b


class Sensor:
    """Base: `channels` values per frame, `read_frame(out, pos)` writes raw ints at out[pos:]."""

    channels = 1
    rate_hz = 0

    def read_frame(self, out, pos):
        raise NotImplementedError


class ADC(Sensor):
    """Analog inputs (microphone, light, flex sensor...): `adcs` are machine.ADC objects."""

    def __init__(self, adcs, rate_hz=100):
        self.adcs = list(adcs)
        self.channels = len(self.adcs)
        self.rate_hz = rate_hz

    def read_frame(self, out, pos):
        for i, a in enumerate(self.adcs):
            out[pos + i] = a.read_u16() - 32768


class MPU6050(Sensor):
    """InvenSense MPU-6050 over I2C: accelerometer x y z, gyroscope x y z (16-bit signed)."""

    ADDR = 0x68
    PWR_MGMT_1 = 0x6B
    ACCEL_XOUT_H = 0x3B
    WHO_AM_I = 0x75

    def __init__(self, i2c, rate_hz=50, addr=ADDR):
        self.i2c = i2c
        self.addr = addr
        self.channels = 6
        self.rate_hz = rate_hz
        who = i2c.readfrom_mem(addr, self.WHO_AM_I, 1)[0]
        if who not in (0x68, 0x70, 0x72, 0x98):
            raise OSError("no MPU-6050 at 0x%02x (WHO_AM_I 0x%02x)" % (addr, who))
        i2c.writeto_mem(addr, self.PWR_MGMT_1, b"\x00")       # wake up
        self._buf = bytearray(14)

    def read_frame(self, out, pos):
        b = self._buf
        self.i2c.readfrom_mem_into(self.addr, self.ACCEL_XOUT_H, b)
        for i, reg in enumerate((0, 2, 4, 8, 10, 12)):          # skip the temperature at 6
            v = (b[reg] << 8) | b[reg + 1]
            out[pos + i] = v - 65536 if v & 0x8000 else v


class Simulated(Sensor):
    """Frames from a list of raw-value tuples, cycled: tests and demos without hardware."""

    def __init__(self, frames, rate_hz=0):
        self.frames = frames
        self.channels = len(frames[0])
        self.rate_hz = rate_hz
        self.i = 0

    def read_frame(self, out, pos):
        f = self.frames[self.i % len(self.frames)]
        self.i += 1
        for c in range(self.channels):
            out[pos + c] = f[c]


class Quantizer:
    """Raw integer -> model int8 per channel: clamp(((raw - offset) * mult >> shift) + zp)."""

    def __init__(self, mult, shift, offset, zp):
        self.mult, self.shift, self.offset, self.zp = list(mult), list(shift), list(offset), zp

    @classmethod
    def from_scale(cls, in_scale, in_zp, raw_per_unit, offset=None, shift=16):
        """The model's input is in physical units (input scale in_scale); a channel delivers
        raw_per_unit raw counts per unit.  Computed once (floats), applied with integers."""
        n = len(raw_per_unit)
        mult = [int(round((1 << shift) / (r * in_scale))) for r in raw_per_unit]
        return cls(mult, [shift] * n, offset or [0] * n, in_zp)

    def __call__(self, raw, out):
        n = len(self.mult)
        for i in range(len(raw)):
            c = i % n
            v = (((raw[i] - self.offset[c]) * self.mult[c]) >> self.shift[c]) + self.zp
            out[i] = (v if v >= -128 else -128) if v <= 127 else 127


class Button:
    """A push button as label source: each press within `window_ms` adds one to the label."""

    def __init__(self, pin, window_ms=800):
        self.pin = pin
        self.window_ms = window_ms

    def wait_label(self):
        label = -1
        last = ticks_us()
        while True:
            if not self.pin.value():                # pressed (pull-up)
                label += 1
                while not self.pin.value():
                    sleep_us(1000)
                last = ticks_us()
            elif label >= 0 and ticks_diff(ticks_us(), last) > self.window_ms * 1000:
                return label
            sleep_us(1000)


class Recorder:
    """Reads `frames` frames from a sensor into one int8 sample and gives it to a trainer."""

    def __init__(self, sensor, quantizer, frames):
        import array
        self.sensor = sensor
        self.quantizer = quantizer
        self.frames = frames
        self.raw = array.array("i", [0] * (frames * sensor.channels))
        self.sample = bytearray(frames * sensor.channels)
        self._q = memoryview(self.sample)

    def read(self):
        """One sample (a view valid until the next read)."""
        period = 1000000 // self.sensor.rate_hz if self.sensor.rate_hz else 0
        ch = self.sensor.channels
        t = ticks_us()
        for f in range(self.frames):
            self.sensor.read_frame(self.raw, f * ch)
            if period:
                t += period
                wait = ticks_diff(t, ticks_us())
                if wait > 0:
                    sleep_us(wait)
        q = self._q
        out = self.sample
        self.quantizer(self.raw, _Signed(out))
        return q

    def record(self, trainer, label=None, button=None, validation=False):
        """Record one labelled sample: the label given (e.g. by the host) or pressed on a button.
        Trains on it (or keeps it for validation); returns (label, loss or None)."""
        if label is None:
            if button is None:
                raise ValueError("label: give a label or a button")
            label = button.wait_label()
        x = self.read()
        if validation:
            trainer.add_validation(x, label)
            return label, None
        return label, trainer.step(x, label)


class _Signed:
    """Write int8 values into a bytearray."""

    def __init__(self, buf):
        self.buf = buf

    def __setitem__(self, i, v):
        self.buf[i] = v & 0xFF
