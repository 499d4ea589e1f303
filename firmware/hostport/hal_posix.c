/*
 * POSIX implementation of the MicroPython HAL for the microtrain host port.
 *
 * Everything that touches the host OS for stdio and time lives here, so
 * that a bare-metal (or emulated-board) HAL can replace this file alone.
 */

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "py/mphal.h"
#include "py/mpprint.h"
#include "py/runtime.h"
#include "py/stream.h"
#include "shared/readline/readline.h"

// True when stdio behaves like a board's REPL UART (output "\n" -> "\r\n").
static bool stdio_repl_mode;
// True while stdin (a tty) is in raw mode and orig_termios must be restored.
static bool tty_raw;
static struct termios orig_termios;
static struct sigaction orig_sigint;
static int interrupt_char = -1;
// Number of reads that hit end-of-file on stdin.
static unsigned int stdin_eof_count;

/******************************************************************************/
// Keyboard interrupt.

// Restore the terminal and die from the signal with its default action.
static void fatal_signal_handler(int signum) {
    if (tty_raw) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &orig_termios);
    }
    signal(signum, SIG_DFL);
    raise(signum);
}

static void sigint_handler(int signum) {
    if (interrupt_char != -1) {
        // Code is running: raise KeyboardInterrupt in the VM.
        mp_sched_keyboard_interrupt();
    } else {
        // Waiting for REPL input (not a raw tty, or sent by kill): exit.
        fatal_signal_handler(signum);
    }
}

static void tty_set_isig(bool enable) {
    if (!tty_raw) {
        return;
    }
    struct termios t;
    if (tcgetattr(STDIN_FILENO, &t) != 0) {
        return;
    }
    if (enable) {
        t.c_lflag |= ISIG;
    } else {
        t.c_lflag &= ~ISIG;
    }
    tcsetattr(STDIN_FILENO, TCSANOW, &t);
}

void mp_hal_set_interrupt_char(int c) {
    interrupt_char = c;
    // In raw mode Ctrl-C is a normal character.  While code is running let
    // the terminal turn it into SIGINT so the VM can be interrupted.
    tty_set_isig(c == CHAR_CTRL_C);
}

/******************************************************************************/
// Stdio set-up.

void mp_hal_stdio_init(bool repl) {
    stdio_repl_mode = repl;
    stdin_eof_count = 0;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = sigint_handler;
    sigemptyset(&sa.sa_mask);
    // No SA_RESTART: a blocking read()/nanosleep() returns EINTR so the
    // pending KeyboardInterrupt is raised promptly.
    sigaction(SIGINT, &sa, &orig_sigint);

    if (repl && isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &orig_termios) == 0) {
        struct termios t = orig_termios;
        t.c_iflag &= ~(BRKINT | ICRNL | INLCR | IGNCR | ISTRIP | IXON);
        t.c_oflag &= ~OPOST;
        t.c_lflag &= ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
        t.c_cflag |= CS8;
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) == 0) {
            tty_raw = true;
            sa.sa_handler = fatal_signal_handler;
            sigaction(SIGTERM, &sa, NULL);
            sigaction(SIGHUP, &sa, NULL);
        }
    }
}

void mp_hal_stdio_deinit(void) {
    if (tty_raw) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &orig_termios);
        tty_raw = false;
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
    }
    sigaction(SIGINT, &orig_sigint, NULL);
}

/******************************************************************************/
// Stdio.

bool mp_hal_stdin_closed(void) {
    return stdin_eof_count != 0;
}

int mp_hal_stdin_rx_chr(void) {
    for (;;) {
        unsigned char c;
        ssize_t n = read(STDIN_FILENO, &c, 1);
        if (n == 1) {
            // Enter arrives as "\r" from a raw tty; map "\n" from pipes to
            // the same so the REPL line editor sees a line ending.
            if (c == '\n') {
                c = '\r';
            }
            return c;
        }
        if (n < 0 && errno == EINTR) {
            mp_handle_pending(true);
            continue;
        }
        // End-of-file (or a read error).  A board never sees this, so turn
        // it into REPL control characters that unwind any state: Ctrl-D
        // (finish/execute, or exit at an empty prompt) alternating with
        // Ctrl-C (cancel a partially entered line).
        return (stdin_eof_count++ & 1) ? CHAR_CTRL_C : CHAR_CTRL_D;
    }
}

static void write_all(int fd, const char *str, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, str, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return;
        }
        str += n;
        len -= n;
    }
}

static void write_cooked(int fd, const char *str, size_t len) {
    if (!stdio_repl_mode) {
        write_all(fd, str, len);
        return;
    }
    while (len > 0) {
        const char *nl = memchr(str, '\n', len);
        if (nl == NULL) {
            write_all(fd, str, len);
            return;
        }
        write_all(fd, str, nl - str);
        write_all(fd, "\r\n", 2);
        len -= nl - str + 1;
        str = nl + 1;
    }
}

mp_uint_t mp_hal_stdout_tx_strn(const char *str, size_t len) {
    write_all(STDOUT_FILENO, str, len);
    return len;
}

void mp_hal_stdout_tx_strn_cooked(const char *str, size_t len) {
    write_cooked(STDOUT_FILENO, str, len);
}

void mp_hal_stdout_tx_str(const char *str) {
    mp_hal_stdout_tx_strn(str, strlen(str));
}

uintptr_t mp_hal_stdio_poll(uintptr_t poll_flags) {
    uintptr_t ret = 0;
    if (poll_flags & MP_STREAM_POLL_RD) {
        struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
        if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLIN | POLLHUP))) {
            ret |= MP_STREAM_POLL_RD;
        }
    }
    if (poll_flags & MP_STREAM_POLL_WR) {
        ret |= MP_STREAM_POLL_WR;
    }
    return ret;
}

static void stderr_print_strn(void *env, const char *str, size_t len) {
    (void)env;
    write_cooked(STDERR_FILENO, str, len);
}

const mp_print_t mp_stderr_print = { NULL, stderr_print_strn };

/******************************************************************************/
// Time.

static uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

mp_uint_t mp_hal_ticks_ms(void) {
    return monotonic_ns() / 1000000;
}

mp_uint_t mp_hal_ticks_us(void) {
    return monotonic_ns() / 1000;
}

mp_uint_t mp_hal_ticks_cpu(void) {
    return monotonic_ns();
}

uint64_t mp_hal_time_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static void delay_ns(uint64_t ns) {
    uint64_t deadline = monotonic_ns() + ns;
    for (;;) {
        // Run scheduled callbacks and raise a pending KeyboardInterrupt.
        mp_handle_pending(true);
        uint64_t now = monotonic_ns();
        if (now >= deadline) {
            return;
        }
        uint64_t remain = deadline - now;
        struct timespec ts = { remain / 1000000000ULL, remain % 1000000000ULL };
        nanosleep(&ts, NULL); // EINTR: loop to handle the signal
    }
}

void mp_hal_delay_ms(mp_uint_t ms) {
    delay_ns((uint64_t)ms * 1000000ULL);
}

void mp_hal_delay_us(mp_uint_t us) {
    delay_ns((uint64_t)us * 1000ULL);
}
