// What a process tree shares: open file descriptions (kcmp), Unix socket pairs (sock_diag)
// and the bytes queued on a socket.
#define _GNU_SOURCE
#include "wb_native.h"
#include <errno.h>
#include <linux/kcmp.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int wb_kcmp_file(pid_t pid1, pid_t pid2, int fd1, int fd2) {
    long r = syscall(SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2);
    return r < 0 ? -errno : (int)r;
}

int wb_kcmp_epoll_target(pid_t pid, int fd, int epfd, int tfd) {
    // struct kcmp_epoll_slot { __u32 efd, tfd, toff; }: toff 0 is the first watch of tfd.
    struct kcmp_epoll_slot slot = { .efd = (__u32)epfd, .tfd = (__u32)tfd, .toff = 0 };
    long r = syscall(SYS_kcmp, pid, pid, KCMP_EPOLL_TFD, fd, (unsigned long)&slot);
    return r < 0 ? -errno : (int)r;
}

int wb_kcmp_tables(pid_t pid1, pid_t pid2, int files) {
    long r = syscall(SYS_kcmp, pid1, pid2, files ? KCMP_FILES : KCMP_FS, 0, 0);
    return r < 0 ? -errno : (int)r;
}

int wb_kcmp_vm(pid_t pid1, pid_t pid2) {
    long r = syscall(SYS_kcmp, pid1, pid2, KCMP_VM, 0, 0);
    return r < 0 ? -errno : (int)r;
}

int wb_unix_sockets(wb_unix_socket *out, int cap, int *count) {
    *count = 0;
    int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (nl < 0) return errno;
    struct {
        struct nlmsghdr nlh;
        struct unix_diag_req req;
    } msg;
    memset(&msg, 0, sizeof msg);
    msg.nlh.nlmsg_len = sizeof msg;
    msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.req.sdiag_family = AF_UNIX;
    msg.req.udiag_states = ~0U;
    msg.req.udiag_show = UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN;
    if (send(nl, &msg, sizeof msg, 0) != (ssize_t)sizeof msg) { int e = errno; close(nl); return e; }
    static __thread char buf[32768];
    for (;;) {
        ssize_t n = recv(nl, buf, sizeof buf, 0);
        if (n < 0) { if (errno == EINTR) continue; int e = errno; close(nl); return e; }
        if (n == 0) break;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE) { close(nl); return 0; }
            if (h->nlmsg_type == NLMSG_ERROR) { close(nl); return EPROTO; }
            struct unix_diag_msg *d = NLMSG_DATA(h);
            wb_unix_socket s = { .inode = d->udiag_ino, .peer = 0, .type = d->udiag_type, .state = d->udiag_state,
                                 .queued = 0 };
            int len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof *d));
            for (struct rtattr *a = (struct rtattr *)(d + 1); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
                if (a->rta_type == UNIX_DIAG_PEER) s.peer = *(uint32_t *)RTA_DATA(a);
                if (a->rta_type == UNIX_DIAG_RQLEN) {
                    s.queued = ((struct unix_diag_rqlen *)RTA_DATA(a))->udiag_rqueue;
                    s.backlog = ((struct unix_diag_rqlen *)RTA_DATA(a))->udiag_wqueue;
                }
                if (a->rta_type == UNIX_DIAG_SHUTDOWN) s.shutdown = *(uint8_t *)RTA_DATA(a);
            }
            if (*count < cap) out[*count] = s;
            (*count)++;
        }
    }
    close(nl);
    return 0;
}

int wb_socket_peek(int fd, void *buf, size_t cap, size_t *got) {
    *got = 0;
    int inq = 0;
    if (ioctl(fd, SIOCINQ, &inq) != 0) return errno;
    if (inq <= 0) return 0;
    if ((size_t)inq > cap) return ENOBUFS;
    ssize_t n = recv(fd, buf, (size_t)inq, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0) return errno == EAGAIN ? 0 : errno;
    if (n < inq) {
        // The queue has boundaries a single peek stops at: peek on from an offset.
        int off = (int)n;
        if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off) != 0) return errno;
        while (n < inq) {
            ssize_t m = recv(fd, (char *)buf + n, (size_t)(inq - n), MSG_PEEK | MSG_DONTWAIT);
            if (m <= 0) break;
            n += m;
        }
        off = -1;
        setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off);
    }
    *got = (size_t)n;
    return 0;
}
