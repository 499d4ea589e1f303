// The emulated Raspberry Pi Pico: an RP2040 in rp2040js running an unmodified UF2 (official
// MicroPython), its USB CDC serial on a unix socket, its 2 MB flash kept in a file.
//
//   node pico.mjs --bootrom rp2040-bootrom-b1.bin --flash flash.bin [--image firmware.uf2]
//                 --socket cdc.sock
//
// The flash file is the chip: it holds the whole 2 MB (firmware and file system). --image writes
// the UF2's blocks into it, as dragging a UF2 onto the Pico's boot drive does (each 4 KB sector a
// block lands in is erased first, the rest of the flash stays); without --image the board boots
// what the flash holds. Every erase and program goes straight to the file, so a
// board killed at any instant (a power cut) leaves the flash as the chip would be.
//
// The USB host side (enumeration, DTR, the CDC endpoints) is rp2040js's USBCDC; its bytes go to
// and from the one client of --socket (the Python harness bridges that to a pty). stdin takes
// one-line commands, stdout answers with one JSON line: `cycles` (the core's cycle counter and the
// emulated clock in ns), `stats`.
//
// Flash writes: MicroPython calls the boot ROM's flash_range_erase / flash_range_program (and
// runs them from RAM with XIP off); rp2040js has no QSPI flash model behind its SSI, so those two
// ROM functions are patched to a BKPT and done here on the flash array, then returned from.

import fs from 'fs';
import net from 'net';
import path from 'path';
import { pathToFileURL } from 'url';

// rp2040js from the folder `make setup` installed it in (RP2040JS_DIR), else from node's search path
const where = process.env.RP2040JS_DIR;
const { Simulator, USBCDC, ConsoleLogger, LogLevel } = await import(where
  ? pathToFileURL(path.join(where, 'node_modules', 'rp2040js', 'dist', 'esm', 'index.js')).href : 'rp2040js');

const FLASH_BYTES = 2 * 1024 * 1024;
const CLOCK_HZ = 125e6;                              // MicroPython's rp2 port runs clk_sys at 125 MHz

function parseArgs(argv) {
  const a = {};
  for (let i = 0; i < argv.length; i++) {
    if (!argv[i].startsWith('--')) throw new Error(`unexpected argument ${argv[i]}`);
    a[argv[i].slice(2)] = argv[i + 1];
    i++;
  }
  for (const k of ['bootrom', 'flash', 'socket']) if (!a[k]) throw new Error(`--${k} is required`);
  return a;
}
const args = parseArgs(process.argv.slice(2));
const log = (msg) => process.stderr.write(`pico: ${msg}\n`);

const sim = new Simulator();
const mcu = sim.rp2040;
mcu.logger = new ConsoleLogger(LogLevel.Error);
const rom = fs.readFileSync(args.bootrom);
mcu.loadBootrom(new Uint32Array(rom.buffer, rom.byteOffset, rom.length >> 2));

// ---- the flash chip: the file --------------------------------------------------------------
const flash = mcu.flash;                             // rp2040js's XIP flash array (reads come from it)
flash.fill(0xff, 0, FLASH_BYTES);
if (fs.existsSync(args.flash)) {
  const saved = fs.readFileSync(args.flash);
  if (saved.length !== FLASH_BYTES) throw new Error(`${args.flash}: ${saved.length} bytes, a 2 MB flash holds ${FLASH_BYTES}`);
  flash.set(saved, 0);
}
if (args.image) {
  const uf2 = fs.readFileSync(args.image);
  let blocks = 0;
  const erased = new Set();                          // as the boot ROM: a sector is erased when first written
  for (let off = 0; off + 512 <= uf2.length; off += 512) {
    if (uf2.readUInt32LE(off) !== 0x0a324655 || uf2.readUInt32LE(off + 4) !== 0x9e5d5157) continue;
    const addr = uf2.readUInt32LE(off + 12) - 0x10000000, size = uf2.readUInt32LE(off + 16);
    if (addr < 0 || addr + size > FLASH_BYTES || size > 476) throw new Error(`${args.image}: block ${blocks} out of flash`);
    for (let sec = addr >> 12; sec <= (addr + size - 1) >> 12; sec++) {
      if (!erased.has(sec)) { flash.fill(0xff, sec << 12, (sec + 1) << 12); erased.add(sec); }
    }
    flash.set(uf2.subarray(off + 32, off + 32 + size), addr);
    blocks++;
  }
  if (!blocks) throw new Error(`${args.image}: no UF2 blocks`);
  log(`wrote ${blocks} UF2 blocks of ${args.image}`);
}
const flashFd = fs.openSync(args.flash, fs.existsSync(args.flash) ? 'r+' : 'w+');
fs.writeSync(flashFd, flash, 0, FLASH_BYTES, 0);
const persist = (addr, n) => fs.writeSync(flashFd, flash, addr, n, addr);
const counts = { erased: 0, programmed: 0 };

// ---- the ROM's flash functions, done here ---------------------------------------------------
const romView = new DataView(mcu.bootrom.buffer);
function romFunction(tag) {                          // the ROM's function table, at the 16-bit pointer at 0x14
  const code = tag.charCodeAt(0) | (tag.charCodeAt(1) << 8);
  for (let p = romView.getUint16(0x14, true); ; p += 4) {
    const c = romView.getUint16(p, true);
    if (c === 0) throw new Error(`boot ROM has no function ${tag}`);
    if (c === code) return romView.getUint16(p + 2, true) & ~1;
  }
}
const handlers = new Map();
function replace(tag, bkpt, fn) {
  romView.setUint16(romFunction(tag), 0xbe00 | bkpt, true);   // BKPT #bkpt as the first instruction
  handlers.set(bkpt, fn);
}
const inFlash = (addr, n) => addr + n <= FLASH_BYTES;
replace('RE', 0xe0, ([addr, count]) => {             // flash_range_erase(addr, count, block, cmd)
  if (!inFlash(addr, count) || addr % 4096 || count % 4096) throw new Error(`erase ${addr}+${count}: not 4 KB sectors in flash`);
  flash.fill(0xff, addr, addr + count);
  persist(addr, count);
  counts.erased += count;
});
replace('RP', 0xe1, ([addr, data, count]) => {       // flash_range_program(addr, data, count)
  if (!inFlash(addr, count) || addr % 256 || count % 256) throw new Error(`program ${addr}+${count}: not 256 B pages in flash`);
  for (let i = 0; i < count; i++) flash[addr + i] &= mcu.readUint8(data + i);   // NOR: program clears bits
  persist(addr, count);
  counts.programmed += count;
});
mcu.onBreak = (code) => {
  const fn = handlers.get(code);
  if (!fn) { log(`BKPT #${code} at 0x${(mcu.core.PC - 2).toString(16)}: stopped`); quit(3); return; }
  fn(Array.from(mcu.core.registers.slice(0, 4), (r) => r >>> 0));
  mcu.core.PC = mcu.core.LR & ~1;
};

// ---- USB CDC <-> the socket's client ------------------------------------------------------
const cdc = new USBCDC(mcu.usbCtrl);
let toBoard = Buffer.alloc(0);
let client = null;
cdc.onDeviceConnected = () => log('USB CDC connected');
cdc.onSerialData = (buf) => { if (client) client.write(Buffer.from(buf)); };
function feed() {
  let i = 0;
  while (i < toBoard.length && !cdc.txFIFO.full) cdc.sendSerialByte(toBoard[i++]);
  if (i) toBoard = toBoard.subarray(i);
}
if (fs.existsSync(args.socket)) fs.unlinkSync(args.socket);
const server = net.createServer((sock) => {
  if (client) client.destroy();
  client = sock;
  toBoard = Buffer.alloc(0);
  sock.on('data', (d) => { toBoard = Buffer.concat([toBoard, d]); });
  sock.on('close', () => { if (client === sock) client = null; });
  sock.on('error', () => {});
});
server.listen(args.socket, () => log(`CDC on ${args.socket}`));

// ---- control on stdin ---------------------------------------------------------------------
const core = mcu.core, clock = sim.clock;
let pendingLine = '';
process.stdin.on('data', (d) => {
  pendingLine += d.toString();
  let nl;
  while ((nl = pendingLine.indexOf('\n')) >= 0) {
    const cmd = pendingLine.slice(0, nl).trim();
    pendingLine = pendingLine.slice(nl + 1);
    if (cmd === 'cycles') process.stdout.write(JSON.stringify({ cycles: core.cycles, nanos: clock.nanos }) + '\n');
    else if (cmd === 'stats') process.stdout.write(JSON.stringify({ cycles: core.cycles, nanos: clock.nanos, ...counts }) + '\n');
    else process.stdout.write(JSON.stringify({ error: `unknown command ${cmd}` }) + '\n');
  }
});
process.stdin.on('end', () => quit(0));              // the harness went away: power off

// ---- run: instructions in slices of ~10 ms wall time, the event loop in between ------------
const nsPerCycle = 1e9 / CLOCK_HZ;
let running = true;
function run() {
  feed();
  const until = Date.now() + 10;
  while (running && Date.now() < until) {
    for (let i = 0; i < 50000; i++) {
      if (core.waiting) {                            // WFI/WFE: jump the clock to the next alarm
        const dt = clock.nanosToNextAlarm;
        if (dt <= 0) break;
        clock.tick(dt);
      } else {
        clock.tick(core.executeInstruction() * nsPerCycle);
      }
    }
    if (toBoard.length) feed();
  }
  if (running) setImmediate(run);
}
function quit(code) {
  running = false;
  try { fs.fsyncSync(flashFd); fs.closeSync(flashFd); } catch (e) { /* already closed */ }
  server.close();
  process.exit(code);
}
process.on('SIGTERM', () => quit(0));
process.on('SIGINT', () => quit(0));
core.PC = 0x10000000;
run();
