// Pseudo-terminal pairs seen from a copy of their master's fd: the pair's number, lock and
// packet mode, and the terminal side's settings (termios and window size, which the
// kernel's tty layer reads through the master), and the bytes waiting to be read.
#define _GNU_SOURCE
#include "wb_native.h"
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>

int wb_pty_read(int master, wb_pty_state *out) {
    memset(out, 0, sizeof *out);
    unsigned int index = 0;
    if (ioctl(master, TIOCGPTN, &index) != 0) return -errno;
    out->index = (int)index;
    int locked = 0, packet = 0;
    if (ioctl(master, TIOCGPTLCK, &locked) == 0) out->locked = locked != 0;
    if (ioctl(master, TIOCGPKT, &packet) == 0) out->packet = packet != 0;
    unsigned char termios[64];
    if (ioctl(master, TCGETS, termios) != 0) return -errno;
    memcpy(out->termios, termios, sizeof out->termios);
    struct winsize w;
    if (ioctl(master, TIOCGWINSZ, &w) != 0) return -errno;
    out->winsize[0] = w.ws_row; out->winsize[1] = w.ws_col; out->winsize[2] = w.ws_xpixel; out->winsize[3] = w.ws_ypixel;
    int readable = 0;
    out->readable = ioctl(master, FIONREAD, &readable) == 0 ? readable : 0;
    return 0;
}

int wb_tty_readable(int fd) {
    int readable = 0;
    return ioctl(fd, FIONREAD, &readable) == 0 ? readable : -errno;
}

int wb_pty_apply(int master, const wb_pty_state *state, int lock) {
    unsigned char termios[64];
    if (ioctl(master, TCGETS, termios) != 0) return -errno;
    memcpy(termios, state->termios, sizeof state->termios);
    if (ioctl(master, TCSETS, termios) != 0) return -errno;
    struct winsize w = { state->winsize[0], state->winsize[1], state->winsize[2], state->winsize[3] };
    if (ioctl(master, TIOCSWINSZ, &w) != 0) return -errno;
    int packet = state->packet;
    if (ioctl(master, TIOCPKT, &packet) != 0) return -errno;
    int locked = lock;
    if (ioctl(master, TIOCSPTLCK, &locked) != 0) return -errno;
    return 0;
}

int wb_pty_lock(int master, int lock) {
    return ioctl(master, TIOCSPTLCK, &lock) == 0 ? 0 : -errno;
}
