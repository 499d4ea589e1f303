"""The CLI's hardware boundary, with fakes that behave like the hardware: the RP2040's UF2
bootloader drive (a folder with INFO_UF2.TXT) and esptool (its entry point intercepted)."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from microtrain import cli
from microtrain.device import flashing

UF2 = b"UF2\n" + b"\x57\x51\x5d\x9e" + bytes(504)     # one 512-byte UF2 block header


@pytest.fixture
def drive(tmp_path):
    d = tmp_path / "media" / "RPI-RP2"
    d.mkdir(parents=True)
    (d / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n")
    (d / "INDEX.HTM").write_text("<html></html>")
    return d


def test_uf2_copy_to_the_bootloader_drive(tmp_path, drive):
    fw = tmp_path / "firmware.uf2"
    fw.write_bytes(UF2 * 4)
    r = CliRunner().invoke(cli.main, ["flash", "--board", "rpi_pico", str(fw), "--drive", str(drive)])
    assert r.exit_code == 0, r.output
    assert (drive / "firmware.uf2").read_bytes() == UF2 * 4
    assert flashing.find_uf2_drive(roots=[str(tmp_path / "media" / "*")]) == [str(drive)]


def test_uf2_refuses_wrong_files_and_missing_drives(tmp_path, drive):
    bad = tmp_path / "firmware.uf2"
    bad.write_bytes(b"\x7fELF" + bytes(100))
    r = CliRunner().invoke(cli.main, ["flash", "--board", "rpi_pico", str(bad), "--drive", str(drive)])
    assert r.exit_code != 0 and "not a UF2 file" in r.output
    good = tmp_path / "ok.uf2"
    good.write_bytes(UF2)
    r = CliRunner().invoke(cli.main, ["flash", "--board", "rp2040", str(good), "--drive", str(tmp_path)])
    assert r.exit_code != 0 and "no INFO_UF2.TXT" in r.output
    with pytest.raises(flashing.FlashError, match="hold BOOTSEL"):
        flashing.flash_uf2(str(good), roots=[str(tmp_path / "nothing" / "*")])


def test_esptool_is_called_through_its_python_api(tmp_path, monkeypatch):
    import esptool
    calls = []
    monkeypatch.setattr(esptool, "main", lambda args: calls.append(list(args)))
    fw = tmp_path / "firmware.bin"
    fw.write_bytes(b"\xe9" + bytes(4095))
    r = CliRunner().invoke(cli.main, ["flash", "--board", "esp32_s3", str(fw), "--port", "/dev/ttyACM7"])
    assert r.exit_code == 0, r.output
    assert calls == [["--chip", "esp32s3", "--port", "/dev/ttyACM7", "--baud", "460800", "write_flash", "0x0", str(fw)]]

    def fail(args):
        raise esptool.FatalError("Failed to connect to ESP32-S3: No serial data received.")
    monkeypatch.setattr(esptool, "main", fail)
    r = CliRunner().invoke(cli.main, ["flash", "--board", "esp32_s3", str(fw), "--port", "/dev/ttyACM7"])
    assert r.exit_code != 0 and "Failed to connect" in r.output


def test_nothing_connected_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("MICROTRAIN_PORT", raising=False)
    fw = tmp_path / "firmware.bin"
    fw.write_bytes(b"\xe9" + bytes(100))
    r = CliRunner().invoke(cli.main, ["flash", "--board", "esp32_s3", str(fw)])
    assert r.exit_code != 0 and "no board found" in r.output
    r = CliRunner().invoke(cli.main, ["boards"])
    assert r.exit_code == 0 and "rpi_pico" in r.output and "esp32_s3" in r.output


def _ports(*ports):
    """pyserial's port list as the OS would give it: ListPortInfo objects with USB ids."""
    from serial.tools.list_ports_common import ListPortInfo
    out = []
    for device, vid, pid, desc in ports:
        p = ListPortInfo(device, skip_link_detection=True)
        p.vid, p.pid, p.description = vid, pid, desc
        out.append(p)
    return out


def test_boards_lists_what_is_plugged_in(monkeypatch):
    from serial.tools import list_ports
    monkeypatch.setattr(list_ports, "comports", lambda: _ports())
    r = CliRunner().invoke(cli.main, ["boards"])
    assert r.exit_code == 0 and "no USB serial device found" in r.output
    monkeypatch.setattr(list_ports, "comports", lambda: _ports(("/dev/ttyACM3", 0x2E8A, 0x0005, "Board CDC"),
                                                               ("/dev/ttyS0", None, None, "n/a"),
                                                               ("/dev/ttyUSB1", 0x1A86, 0x55D4, "USB Single Serial")))
    r = CliRunner().invoke(cli.main, ["boards"])
    assert r.exit_code == 0 and "no USB serial device found" not in r.output
    lines = r.output.split("plugged in:")[1].strip().splitlines()
    assert [ln.split()[:3] for ln in lines] == [["/dev/ttyACM3", "2e8a:0005", "rpi_pico"],
                                                ["/dev/ttyUSB1", "1a86:55d4", "esp32_s3"]]
    # one board plugged in: commands find it without --port; two: they ask which
    r = CliRunner().invoke(cli.main, ["push", "--port", ""])
    assert r.exit_code != 0 and "several boards plugged in (/dev/ttyACM3, /dev/ttyUSB1): pass --port" in r.output


def test_help_does_not_import_numpy_or_onnx():
    code = "import sys, microtrain.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'onnx')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    r = CliRunner().invoke(cli.main, ["--help"])
    assert r.exit_code == 0
    for cmd in ("boards", "convert", "push", "train", "telemetry", "pull", "evaluate", "flash", "virtual-board", "demo"):
        assert cmd in r.output
        assert CliRunner().invoke(cli.main, [cmd, "--help"]).exit_code == 0
