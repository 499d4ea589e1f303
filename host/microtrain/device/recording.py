"""The board records from its own sensor and trains on each sample (`microtrain train --sensor`):
a script run over the raw REPL, with the sensor's pins from the board definition."""

from microtrain.device.board_io import BoardError, Session

SENSOR_SCRIPT = """
try:
    import machine
except ImportError:
    machine = None
need = 'I2C' if {sensor!r} == 'mpu6050' else 'ADC'
if machine is None or not hasattr(machine, need):
    raise SystemExit('this board has no machine.' + need + ': it cannot read the sensor')
import microtrain
from microtrain import sensors
m = microtrain.load({name!r})
t = microtrain.Trainer(m, checkpoint_path={ckpt!r})
t.resume()                      # the newest checkpoint of this model, if any
if {sensor!r} == 'mpu6050':
    s = sensors.MPU6050(machine.I2C({i2c_id}, sda=machine.Pin({sda}), scl=machine.Pin({scl})), rate_hz={rate})
else:
    s = sensors.ADC([machine.ADC(p) for p in {adc!r}], rate_hz={rate})
q = sensors.Quantizer.from_scale(m.in_scale, m.in_zp, raw_per_unit=[{per_unit}] * s.channels)
rec = sensors.Recorder(s, q, frames=m.in_size // s.channels)
for k in range({count}):
    label, loss = rec.record(t, label={label})
    print('sample', k, 'label', label, 'loss', loss)
t.checkpoint()
print('RECORDED', {count}, 'STEPS', t.steps)
"""


def record_on_board(port, board, sensor, label, count, name, per_unit, rate):
    """The board reads its own sensor (pins from the board definition) and trains on each sample."""
    pins = board.pins or {}
    i2c = pins.get("i2c", {"id": 0, "sda": 4, "scl": 5})
    script = SENSOR_SCRIPT.format(name=name, ckpt=name.rsplit(".", 1)[0] + ".ckpt", sensor=sensor,
                                  i2c_id=i2c["id"], sda=i2c["sda"], scl=i2c["scl"], adc=pins.get("adc", [26]),
                                  rate=rate, per_unit=per_unit, count=count, label=label)
    try:
        with Session(port) as s:
            return s.exec(script).decode()
    except Exception as e:                  # noqa: BLE001 - the board's exception text is the message
        raise BoardError(str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)) from e
