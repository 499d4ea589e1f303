"""On-board data acquisition in MicroPython: an MPU-6050 behind a fake I2C bus (the hardware
boundary; the fake answers like the chip's register map), ADC channels, integer quantization to
the model's input, and the recorder feeding labelled samples to the trainer."""

import numpy as np

from microtrain.model import modelfile
from microtrain.plan import planner
from microtrain.device import unixport
from research import zoo

SCRIPT = r"""
import struct, microtrain
from microtrain import sensors

class FakeI2C:
    # MPU-6050 register file: WHO_AM_I 0x68, 14 data bytes from 0x3B, big-endian int16
    def __init__(self, frames):
        self.frames = frames
        self.i = 0
        self.awake = False
    def readfrom_mem(self, addr, reg, n):
        assert addr == 0x68
        return bytes([0x68]) if reg == 0x75 else bytes(n)
    def writeto_mem(self, addr, reg, data):
        if reg == 0x6B and data == b'\x00':
            self.awake = True
    def readfrom_mem_into(self, addr, reg, buf):
        assert addr == 0x68 and reg == 0x3B and self.awake
        ax, ay, az, gx, gy, gz = self.frames[self.i % len(self.frames)]
        self.i += 1
        buf[:] = struct.pack('>7h', ax, ay, az, 1234, gx, gy, gz)

D = '{dir}'
raw = open(D + '/raw.bin', 'rb').read()
n = len(raw) // 12
frames = [struct.unpack_from('<6h', raw, 12 * i) for i in range(n)]
m = microtrain.load(D + '/m.mtm')
t = microtrain.Trainer(m, checkpoint_path=D + '/ck')
imu = sensors.MPU6050(FakeI2C(frames), rate_hz=0)
q = sensors.Quantizer.from_scale(m.in_scale, m.in_zp, raw_per_unit=[{per_unit}] * 6)
rec = sensors.Recorder(imu, q, frames=100)
label, loss = rec.record(t, label=2)
print('SAMPLE', bytes(rec.sample).hex())
print('LABEL', label, 'STEPS', t.steps, 'LOSS', loss is not None)
rec.record(t, label=1, validation=True)
print('VALIDATION', t.val_n)

class FakeADC:
    def __init__(self, v):
        self.v = v
    def read_u16(self):
        return self.v
adc = sensors.ADC([FakeADC(0), FakeADC(40000), FakeADC(65535)])
out = [0, 0, 0]
adc.read_frame(out, 0)
print('ADC', out)

class Pin:
    def __init__(self, presses):
        self.seq = []
        for p in range(presses):
            self.seq += [1, 0, 0, 1]
    def value(self):
        return self.seq.pop(0) if self.seq else 1
print('BUTTON', sensors.Button(Pin(3), window_ms=5).wait_label())
"""


def test_mpu6050_recorder_quantizes_like_the_host_and_trains(tmp_path):
    _, model, (Xtr, ytr), _ = zoo.imu_reference(seed=0)
    p = planner.plan(model, "sparse")
    modelfile.save(tmp_path / "m.mtm", model, p)
    per_unit = 256                                   # raw counts per physical unit of the dataset
    x = Xtr[0].reshape(100, 6)
    raw = np.clip(np.round(x * per_unit), -32768, 32767).astype("<i2")
    (tmp_path / "raw.bin").write_bytes(raw.tobytes())
    out = unixport.run(SCRIPT.replace("{dir}", str(tmp_path)).replace("{per_unit}", str(per_unit)))
    got = np.frombuffer(bytes.fromhex(out.split("SAMPLE ")[1].split()[0]), np.int8)
    expected = model.quantize_input(raw.astype(np.float64) / per_unit).ravel()
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1      # integer vs float rounding
    assert "LABEL 2 STEPS 1 LOSS True" in out and "VALIDATION 1" in out
    assert "ADC [-32768, 7232, 32767]" in out
    assert "BUTTON 2" in out                            # three presses: label 2
