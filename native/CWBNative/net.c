// Sockets from wb's side: TCP repair, inet_diag, datagram queues, BPF filters.
#define _GNU_SOURCE
#include "wb_net.h"
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/unix_diag.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

int wb_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }

int wb_tcp_state(int fd, uint32_t *state, uint32_t *waiting, uint32_t *backlog) {
    struct tcp_info info;
    socklen_t len = sizeof info;
    memset(&info, 0, sizeof info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return errno;
    *state = info.tcpi_state;
    // For a listener, tcp_info carries its accept queue: its length and its limit.
    *waiting = info.tcpi_unacked;
    *backlog = info.tcpi_sacked;
    return 0;
}

int wb_tcp_repair(int fd, int mode) {
    return setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &mode, sizeof mode) == 0 ? 0 : errno;
}

static int get_u32(int fd, int name, uint32_t *out) {
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(fd, IPPROTO_TCP, name, &v, &len) != 0) return errno;
    *out = (uint32_t)v;
    return 0;
}

static int select_queue(int fd, int queue) {
    return setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof queue) == 0 ? 0 : errno;
}

int wb_tcp_read(int fd, wb_tcp_conn *c) {
    memset(c, 0, sizeof *c);
    struct tcp_info info;
    socklen_t len = sizeof info;
    memset(&info, 0, sizeof info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return errno;
    c->state = info.tcpi_state;
    c->options = info.tcpi_options & (TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE);
    c->snd_wscale = info.tcpi_snd_wscale;
    c->rcv_wscale = info.tcpi_rcv_wscale;
    int e;
    if ((e = select_queue(fd, TCP_SEND_QUEUE)) || (e = get_u32(fd, TCP_QUEUE_SEQ, &c->snd_seq))) return e;
    if ((e = select_queue(fd, TCP_RECV_QUEUE)) || (e = get_u32(fd, TCP_QUEUE_SEQ, &c->rcv_seq))) return e;
    if ((e = select_queue(fd, TCP_NO_QUEUE))) return e;
    int v = 0;
    if (ioctl(fd, SIOCOUTQ, &v) != 0) return errno;
    c->outq = (uint32_t)v;
    if (ioctl(fd, SIOCOUTQNSD, &v) != 0) return errno;
    c->unsent = (uint32_t)v;
    if (ioctl(fd, SIOCINQ, &v) != 0) return errno;
    c->inq = (uint32_t)v;
    if ((e = get_u32(fd, TCP_MAXSEG, &c->mss))) return e;
    if (c->options & TCPI_OPT_TIMESTAMPS) {
        if ((e = get_u32(fd, TCP_TIMESTAMP, &c->timestamp))) return e;
    }
    struct tcp_repair_window w;
    len = sizeof w;
    if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, &len) != 0) return errno;
    c->snd_wl1 = w.snd_wl1; c->snd_wnd = w.snd_wnd; c->max_window = w.max_window;
    c->rcv_wnd = w.rcv_wnd; c->rcv_wup = w.rcv_wup;
    return 0;
}

int wb_tcp_peek(int fd, int queue, void *buf, size_t len) {
    int e = select_queue(fd, queue);
    if (e) return e;
    size_t got = 0;
    int off = 0;
    while (got < len) {
        // The receive queue is peeked on from an offset past what was copied already.
        if (queue == TCP_RECV_QUEUE && got > 0) {
            off = (int)got;
            if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off) != 0) { e = errno; break; }
        }
        ssize_t n = recv(fd, (char *)buf + got, len - got, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0) { e = errno; break; }
        if (n == 0) { e = EAGAIN; break; }
        got += (size_t)n;
        if (queue == TCP_SEND_QUEUE) break;  // the send queue is copied whole
    }
    if (off) { off = -1; setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off); }
    select_queue(fd, TCP_NO_QUEUE);
    if (!e && got < len) e = EAGAIN;
    return e;
}

static int set_u32(int fd, int name, uint32_t v) {
    int i = (int)v;
    return setsockopt(fd, IPPROTO_TCP, name, &i, sizeof i) == 0 ? 0 : errno;
}

int wb_tcp_prepare(int fd, const wb_tcp_conn *c) {
    int e;
    // The first byte of each queue: the send queue starts at the first unacknowledged byte.
    if ((e = select_queue(fd, TCP_SEND_QUEUE)) || (e = set_u32(fd, TCP_QUEUE_SEQ, c->snd_seq - c->outq))) return e;
    if ((e = select_queue(fd, TCP_RECV_QUEUE)) || (e = set_u32(fd, TCP_QUEUE_SEQ, c->rcv_seq - c->inq))) return e;
    return select_queue(fd, TCP_NO_QUEUE);
}

static int send_all(int fd, const char *p, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) { if (errno == EINTR) continue; return errno; }
        p += n; len -= (size_t)n;
    }
    return 0;
}

int wb_tcp_load_sent(int fd, const void *bytes, size_t len) {
    int e;
    if ((e = select_queue(fd, TCP_SEND_QUEUE)) || (e = send_all(fd, bytes, len))) return e;
    return select_queue(fd, TCP_NO_QUEUE);
}

int wb_tcp_finish(int fd, const wb_tcp_conn *c, const void *recvq) {
    struct tcp_repair_opt opts[4];
    int n = 0;
    opts[n].opt_code = TCPOPT_MAXSEG; opts[n].opt_val = c->mss; n++;
    if (c->options & TCPI_OPT_WSCALE) { opts[n].opt_code = TCPOPT_WINDOW; opts[n].opt_val = c->snd_wscale | (c->rcv_wscale << 16); n++; }
    if (c->options & TCPI_OPT_SACK) { opts[n].opt_code = TCPOPT_SACK_PERMITTED; opts[n].opt_val = 0; n++; }
    if (c->options & TCPI_OPT_TIMESTAMPS) { opts[n].opt_code = TCPOPT_TIMESTAMP; opts[n].opt_val = 0; n++; }
    if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts, (socklen_t)(n * sizeof opts[0])) != 0) return errno;
    int e;
    if ((c->options & TCPI_OPT_TIMESTAMPS) && (e = set_u32(fd, TCP_TIMESTAMP, c->timestamp))) return e;
    if (c->inq) {
        if ((e = select_queue(fd, TCP_RECV_QUEUE)) || (e = send_all(fd, recvq, c->inq))) return e;
    }
    if ((e = select_queue(fd, TCP_NO_QUEUE))) return e;
    struct tcp_repair_window w = { .snd_wl1 = c->snd_wl1, .snd_wnd = c->snd_wnd, .max_window = c->max_window,
                                   .rcv_wnd = c->rcv_wnd, .rcv_wup = c->rcv_wup };
    if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, sizeof w) != 0) return errno;
    return 0;
}

int wb_socket_ioctl_int(int fd, unsigned long request, int *value) {
    return ioctl(fd, request, value) == 0 ? 0 : errno;
}

/// A sock_diag socket with one inet_diag request sent on it (of `type`, with `flags`, the
/// request's family, protocol and states filled in, `id` when given): the socket, or -errno.
static int inet_diag_send(uint16_t type, uint16_t flags, int family, int protocol, const struct inet_diag_sockid *id) {
    int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (nl < 0) return -errno;
    struct {
        struct nlmsghdr nlh;
        struct inet_diag_req_v2 req;
    } msg;
    memset(&msg, 0, sizeof msg);
    msg.nlh.nlmsg_len = sizeof msg;
    msg.nlh.nlmsg_type = type;
    msg.nlh.nlmsg_flags = NLM_F_REQUEST | flags;
    msg.req.sdiag_family = (uint8_t)family;
    msg.req.sdiag_protocol = (uint8_t)protocol;
    msg.req.idiag_states = ~0U;
    if (id) msg.req.id = *id;
    if (send(nl, &msg, sizeof msg, 0) != (ssize_t)sizeof msg) { int e = errno; close(nl); return -e; }
    return nl;
}

int wb_inet_sockets(int family, int protocol, wb_inet_socket *out, int cap, int *count) {
    *count = 0;
    int nl = inet_diag_send(SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, family, protocol, NULL);
    if (nl < 0) return -nl;
    static __thread char buf[32768];
    for (;;) {
        ssize_t n = recv(nl, buf, sizeof buf, 0);
        if (n < 0) { if (errno == EINTR) continue; int e = errno; close(nl); return e; }
        if (n == 0) break;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE) { close(nl); return 0; }
            if (h->nlmsg_type == NLMSG_ERROR) { close(nl); return EPROTO; }
            struct inet_diag_msg *d = NLMSG_DATA(h);
            if (*count < cap) {
                wb_inet_socket s = { .inode = d->idiag_inode, .state = d->idiag_state,
                                     .rqueue = d->idiag_rqueue, .wqueue = d->idiag_wqueue,
                                     .sport = ntohs(d->id.idiag_sport), .dport = ntohs(d->id.idiag_dport),
                                     .family = d->idiag_family };
                memcpy(s.src, d->id.idiag_src, 16);
                memcpy(s.dst, d->id.idiag_dst, 16);
                int len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof *d));
                for (struct rtattr *a = (struct rtattr *)(d + 1); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
                    if (a->rta_type == INET_DIAG_SHUTDOWN) s.shutdown = *(uint8_t *)RTA_DATA(a);
                }
                out[*count] = s;
            }
            (*count)++;
        }
    }
    close(nl);
    return 0;
}

int wb_peek_datagram(int fd, int offset, void *buf, size_t cap, size_t *len, void *from, uint32_t *fromlen) {
    if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &offset, sizeof offset) != 0) return errno;
    struct iovec iov = { .iov_base = buf, .iov_len = cap };
    struct msghdr m = { .msg_name = from, .msg_namelen = *fromlen, .msg_iov = &iov, .msg_iovlen = 1 };
    ssize_t n = recvmsg(fd, &m, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC);
    int e = n < 0 ? errno : 0;
    int off = -1;
    setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off);
    if (e) return e;
    *len = (size_t)n;
    *fromlen = m.msg_namelen;
    return 0;
}

static uint16_t checksum(const void *data, size_t len, uint32_t sum) {
    const uint8_t *p = data;
    for (size_t i = 0; i + 1 < len; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (len & 1) sum += (uint32_t)(p[len - 1] << 8);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static uint32_t partial(const void *data, size_t len) {
    const uint8_t *p = data;
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < len; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    return sum;
}

int wb_udp_inject(const void *from, uint32_t fromlen, const void *to, uint32_t tolen, const void *data, size_t len, uint32_t mark) {
    (void)fromlen; (void)tolen;
    int family = ((const struct sockaddr *)from)->sa_family;
    if (len > 65000) return EMSGSIZE;
    static __thread uint8_t packet[65536 + 64];
    size_t udp_len = sizeof(struct udphdr) + len;
    if (family == AF_INET) {
        const struct sockaddr_in *s = from, *d = to;
        struct iphdr *ip = (struct iphdr *)packet;
        struct udphdr *udp = (struct udphdr *)(packet + sizeof *ip);
        memset(ip, 0, sizeof *ip);
        ip->version = 4; ip->ihl = 5; ip->ttl = 64; ip->protocol = IPPROTO_UDP;
        ip->tot_len = htons((uint16_t)(sizeof *ip + udp_len));
        ip->saddr = s->sin_addr.s_addr; ip->daddr = d->sin_addr.s_addr;
        udp->source = s->sin_port; udp->dest = d->sin_port; udp->len = htons((uint16_t)udp_len); udp->check = 0;
        memcpy(udp + 1, data, len);
        uint32_t sum = partial(&ip->saddr, 8) + IPPROTO_UDP + (uint32_t)udp_len;
        uint16_t c = checksum(udp, udp_len, sum);
        udp->check = htons(c ? c : 0xffff);
        int r = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
        if (r < 0) return errno;
        if (mark && setsockopt(r, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) { int e = errno; close(r); return e; }
        ssize_t n = sendto(r, packet, sizeof *ip + udp_len, 0, to, sizeof(struct sockaddr_in));
        int e = n < 0 ? errno : 0;
        close(r);
        return e;
    }
    if (family == AF_INET6) {
        const struct sockaddr_in6 *s = from, *d = to;
        struct ip6_hdr *ip = (struct ip6_hdr *)packet;
        struct udphdr *udp = (struct udphdr *)(packet + sizeof *ip);
        memset(ip, 0, sizeof *ip);
        ip->ip6_flow = htonl(6u << 28); ip->ip6_plen = htons((uint16_t)udp_len); ip->ip6_nxt = IPPROTO_UDP; ip->ip6_hlim = 64;
        ip->ip6_src = s->sin6_addr; ip->ip6_dst = d->sin6_addr;
        udp->source = s->sin6_port; udp->dest = d->sin6_port; udp->len = htons((uint16_t)udp_len); udp->check = 0;
        memcpy(udp + 1, data, len);
        uint32_t sum = partial(&ip->ip6_src, 32) + IPPROTO_UDP + (uint32_t)udp_len;
        uint16_t c = checksum(udp, udp_len, sum);
        udp->check = htons(c ? c : 0xffff);
        int r = socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
        if (r < 0) return errno;
        if (mark && setsockopt(r, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) { int e = errno; close(r); return e; }
        struct sockaddr_in6 dst = *d;
        dst.sin6_port = 0;
        ssize_t n = sendto(r, packet, sizeof *ip + udp_len, 0, (const struct sockaddr *)&dst, sizeof dst);
        int e = n < 0 ? errno : 0;
        close(r);
        return e;
    }
    return EAFNOSUPPORT;
}

int wb_socket_filter(int fd, uint64_t *out, int cap, int *count) {
    *count = 0;
    socklen_t len = 0;
    // SO_GET_FILTER's length is in instructions, not bytes.
    if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, NULL, &len) != 0) return errno == EINVAL ? 0 : errno;
    if ((int)len > cap) return ENOBUFS;
    if (len == 0) return 0;
    if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, out, &len) != 0) return errno;
    *count = (int)len;
    return 0;
}

int wb_socket_attach_filter(int fd, const uint64_t *code, int count) {
    struct sock_fprog prog = { .len = (unsigned short)count, .filter = (struct sock_filter *)code };
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) == 0 ? 0 : errno;
}

// ---- The guard of held connections ------------------------------------------------------

// Messages to the guard: a byte saying what, then (pid, fd) pairs of held sockets.
static int drain_control(int c, int32_t *held, int *n, int cap, char *what) {
    static char buf[1 + 2 * 4 * 1024];
    for (;;) {
        ssize_t r = recv(c, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { *what = 0; return 0; }
        int pairs = (int)((r - 1) / 8);
        for (int i = 0; i < pairs && *n < cap; i++) {
            memcpy(&held[2 * *n], buf + 1 + 8 * i, 8);
            (*n)++;
        }
        if (buf[0] != 'a') { *what = buf[0]; return 0; }
    }
}

static int target_alive(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

pid_t wb_net_guard_start(const char *nft, const char *table, const pid_t *targets, int ntargets, int keep_if_gone, int *control) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return -errno;
    // Everything the child needs is copied before the fork: it calls no allocator.
    static char nft_path[4096], table_name[256];
    static pid_t watched[64];
    snprintf(nft_path, sizeof nft_path, "%s", nft);
    snprintf(table_name, sizeof table_name, "%s", table);
    int nwatched = ntargets < 64 ? ntargets : 64;
    for (int i = 0; i < nwatched; i++) watched[i] = targets[i];
    pid_t pid = fork();
    if (pid < 0) { int e = errno; close(sv[0]); close(sv[1]); return -e; }
    if (pid == 0) {
        setsid();
        signal(SIGINT, SIG_IGN); signal(SIGHUP, SIG_IGN); signal(SIGPIPE, SIG_IGN); signal(SIGTERM, SIG_IGN);
        int c = sv[1];
        // Nothing of wb's but the control socket: a pipe wb's caller reads to its end must
        // not stay open in here.
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 0); dup2(null, 1); dup2(null, 2); }
        if (c > 3) syscall(SYS_close_range, 3, c - 1, 0);
        syscall(SYS_close_range, c + 1, ~0U, 0);
        static int32_t held[2 * 65536];
        int n = 0;
        char what = 0;
        drain_control(c, held, &n, 65536, &what);
        if (what == 'd') _exit(0);
        // wb is gone (or asked): a process still running gets its connections out of repair
        // mode and their packets flowing again; one that was killed (a checkpoint with
        // --kill) leaves both for the restore.
        int alive = 0;
        for (int i = 0; i < nwatched; i++) alive |= target_alive(watched[i]);
        if (keep_if_gone && !alive && what != 'l') _exit(0);
        // The sockets are taken from their processes now (pidfd_getfd): whatever a process
        // did since, turning repair mode off on one not in it does no harm.
        int pidfd = -1;
        pid_t current = 0;
        for (int i = 0; i < n; i++) {
            pid_t pid = held[2 * i];
            if (pid != current) {
                if (pidfd >= 0) close(pidfd);
                pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
                current = pid;
            }
            if (pidfd < 0) continue;
            int fd = (int)syscall(SYS_pidfd_getfd, pidfd, held[2 * i + 1], 0);
            if (fd < 0) continue;
            int off = 0;
            setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &off, sizeof off);
            close(fd);
        }
        execl(nft_path, "nft", "delete", "table", "inet", table_name, (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    *control = sv[0];
    return pid;
}

int wb_net_guard_send(int control, char what, const int32_t *pairs, int n) {
    static char buf[1 + 2 * 4 * 1024];
    int at = 0;
    do {
        int count = n - at > 1024 ? 1024 : n - at;
        buf[0] = (at + count < n) ? 'a' : what;
        if (count > 0) memcpy(buf + 1, pairs + 2 * at, (size_t)count * 8);
        ssize_t r;
        do { r = send(control, buf, 1 + (size_t)count * 8, MSG_NOSIGNAL); } while (r < 0 && errno == EINTR);
        if (r < 0) return errno;
        at += count;
    } while (at < n);
    return 0;
}

// ---- A FIN, RST or bare ACK as the peer would have sent it --------------------------------

int wb_tcp_inject(const void *from, const void *to, uint32_t seq, uint32_t ack, uint16_t window, uint8_t flags, uint32_t mark) {
    int family = ((const struct sockaddr *)from)->sa_family;
    uint8_t packet[128];
    memset(packet, 0, sizeof packet);
    size_t iplen = family == AF_INET ? sizeof(struct iphdr) : sizeof(struct ip6_hdr);
    struct tcphdr *tcp = (struct tcphdr *)(packet + iplen);
    tcp->seq = htonl(seq);
    tcp->ack_seq = htonl(ack);
    tcp->doff = 5;
    tcp->fin = flags & 0x01 ? 1 : 0;
    tcp->rst = flags & 0x04 ? 1 : 0;
    tcp->ack = flags & 0x10 ? 1 : 0;
    tcp->window = htons(window);
    uint32_t sum;
    int r;
    struct sockaddr_storage dst;
    socklen_t dstlen;
    if (family == AF_INET) {
        const struct sockaddr_in *s = from, *d = to;
        struct iphdr *ip = (struct iphdr *)packet;
        ip->version = 4; ip->ihl = 5; ip->ttl = 64; ip->protocol = IPPROTO_TCP;
        ip->tot_len = htons((uint16_t)(iplen + sizeof *tcp));
        ip->saddr = s->sin_addr.s_addr; ip->daddr = d->sin_addr.s_addr;
        tcp->source = s->sin_port; tcp->dest = d->sin_port;
        sum = partial(&ip->saddr, 8) + IPPROTO_TCP + (uint32_t)sizeof *tcp;
        r = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
        memcpy(&dst, d, sizeof *d); dstlen = sizeof *d;
        ((struct sockaddr_in *)&dst)->sin_port = 0;
    } else if (family == AF_INET6) {
        const struct sockaddr_in6 *s = from, *d = to;
        struct ip6_hdr *ip = (struct ip6_hdr *)packet;
        ip->ip6_flow = htonl(6u << 28); ip->ip6_plen = htons((uint16_t)sizeof *tcp); ip->ip6_nxt = IPPROTO_TCP; ip->ip6_hlim = 64;
        ip->ip6_src = s->sin6_addr; ip->ip6_dst = d->sin6_addr;
        tcp->source = s->sin6_port; tcp->dest = d->sin6_port;
        sum = partial(&ip->ip6_src, 32) + IPPROTO_TCP + (uint32_t)sizeof *tcp;
        r = socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
        memcpy(&dst, d, sizeof *d); dstlen = sizeof *d;
        ((struct sockaddr_in6 *)&dst)->sin6_port = 0;
    } else {
        return EAFNOSUPPORT;
    }
    if (r < 0) return errno;
    tcp->check = htons(checksum(tcp, sizeof *tcp, sum));
    if (mark) setsockopt(r, SOL_SOCKET, SO_MARK, &mark, sizeof mark);
    ssize_t n = sendto(r, packet, iplen + sizeof *tcp, 0, (struct sockaddr *)&dst, dstlen);
    int e = n < 0 ? errno : 0;
    close(r);
    return e;
}

// ---- Unix listeners' waiting connections ------------------------------------------------

int wb_unix_listener_queue(uint64_t inode, uint64_t *out, int cap, int *count) {
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
    msg.nlh.nlmsg_flags = NLM_F_REQUEST;
    msg.req.sdiag_family = AF_UNIX;
    msg.req.udiag_states = ~0U;
    msg.req.udiag_ino = (uint32_t)inode;
    msg.req.udiag_show = UDIAG_SHOW_ICONS;
    msg.req.udiag_cookie[0] = msg.req.udiag_cookie[1] = ~0U;
    if (send(nl, &msg, sizeof msg, 0) != (ssize_t)sizeof msg) { int e = errno; close(nl); return e; }
    static __thread char buf[65536];
    ssize_t n = recv(nl, buf, sizeof buf, 0);
    int e = n < 0 ? errno : 0;
    close(nl);
    if (e) return e;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
        if (h->nlmsg_type == NLMSG_ERROR) return ((struct nlmsgerr *)NLMSG_DATA(h))->error ? -((struct nlmsgerr *)NLMSG_DATA(h))->error : 0;
        if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
        struct unix_diag_msg *d = NLMSG_DATA(h);
        int len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof *d));
        for (struct rtattr *a = (struct rtattr *)(d + 1); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
            if (a->rta_type != UNIX_DIAG_ICONS) continue;
            int k = (int)(RTA_PAYLOAD(a) / sizeof(uint32_t));
            uint32_t *v = RTA_DATA(a);
            for (int i = 0; i < k; i++) {
                if (*count < cap) out[*count] = v[i];
                (*count)++;
            }
        }
    }
    return 0;
}

// ---- nftables, in process --------------------------------------------------------------

// libnftables (the library nft itself is a front end of), loaded when first needed so that
// wb neither links nor needs it where no connection is held. Its API is stable since 0.9.
struct nft_ctx;
static struct {
    int tried;
    struct nft_ctx *ctx;
    int (*run)(struct nft_ctx *, const char *);
    const char *(*error)(struct nft_ctx *);
} nft;

int wb_nft_available(void) {
    if (!nft.tried) {
        nft.tried = 1;
        void *lib = dlopen("libnftables.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!lib) return 0;
        struct nft_ctx *(*make)(uint32_t) = (struct nft_ctx *(*)(uint32_t))dlsym(lib, "nft_ctx_new");
        int (*buffer_error)(struct nft_ctx *) = (int (*)(struct nft_ctx *))dlsym(lib, "nft_ctx_buffer_error");
        int (*buffer_output)(struct nft_ctx *) = (int (*)(struct nft_ctx *))dlsym(lib, "nft_ctx_buffer_output");
        nft.run = (int (*)(struct nft_ctx *, const char *))dlsym(lib, "nft_run_cmd_from_buffer");
        nft.error = (const char *(*)(struct nft_ctx *))dlsym(lib, "nft_ctx_get_error_buffer");
        if (!make || !buffer_error || !buffer_output || !nft.run || !nft.error) return 0;
        nft.ctx = make(0);
        if (!nft.ctx) return 0;
        buffer_error(nft.ctx);
        buffer_output(nft.ctx);
    }
    return nft.ctx != NULL;
}

int wb_nft_run(const char *commands, char *error, size_t cap) {
    if (cap) error[0] = 0;
    if (!wb_nft_available()) return ENOSYS;
    if (nft.run(nft.ctx, commands) == 0) return 0;
    const char *e = nft.error(nft.ctx);
    if (cap && e) snprintf(error, cap, "%s", e);
    return EINVAL;
}

// ---- Set elements over netlink ------------------------------------------------------------

// Adding a thousand connections to the lock's sets as nft text costs libnftables ~10 ms of
// parsing; the same as one netlink batch of NFT_MSG_NEWSETELEM costs well under one. Each
// element is the concatenated key `addr . port . addr . port`, every field padded to 4 bytes
// (nftables registers), as the sets were declared (add set ... { type ipv4_addr . inet_service
// . ipv4_addr . inet_service; }).
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>

static void put_attr(char *buf, size_t *at, uint16_t type, const void *data, size_t len) {
    struct nlattr *a = (struct nlattr *)(buf + *at);
    a->nla_type = type;
    a->nla_len = (uint16_t)(NLA_HDRLEN + len);
    if (len) memcpy(buf + *at + NLA_HDRLEN, data, len);
    *at += NLA_ALIGN(NLA_HDRLEN + len);
}

static size_t begin_nest(char *buf, size_t *at, uint16_t type) {
    size_t start = *at;
    struct nlattr *a = (struct nlattr *)(buf + *at);
    a->nla_type = (uint16_t)(type | NLA_F_NESTED);
    *at += NLA_HDRLEN;
    return start;
}

static void end_nest(char *buf, size_t *at, size_t start) {
    ((struct nlattr *)(buf + start))->nla_len = (uint16_t)(*at - start);
}

static void begin_msg(char *buf, size_t *at, uint16_t type, uint16_t flags, uint8_t family, uint32_t seq, uint16_t res_id) {
    struct nlmsghdr *h = (struct nlmsghdr *)(buf + *at);
    h->nlmsg_type = type;
    h->nlmsg_flags = flags;
    h->nlmsg_seq = seq;
    h->nlmsg_pid = 0;
    struct nfgenmsg *g = (struct nfgenmsg *)(buf + *at + NLMSG_HDRLEN);
    g->nfgen_family = family;
    g->version = NFNETLINK_V0;
    g->res_id = htons(res_id);
    *at += NLMSG_HDRLEN + NLMSG_ALIGN(sizeof *g);
}

int wb_nft_add_elements(const char *table, const char *set, const uint8_t *keys, size_t key_len, int count) {
    if (count <= 0) return 0;
    if (key_len > 64 || strlen(table) > 200 || strlen(set) > 200) return EINVAL;
    int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (nl < 0) return errno;
    struct sockaddr_nl to = { .nl_family = AF_NETLINK };
    size_t per = NLA_HDRLEN * 3 + NLA_ALIGN(key_len);
    int chunk = (int)(60000 / per);
    size_t cap = 1024 + (size_t)chunk * per;
    char *buf = malloc(cap);
    if (!buf) { close(nl); return ENOMEM; }
    int e = 0;
    uint32_t seq = 1;
    for (int at_el = 0; at_el < count && !e; at_el += chunk) {
        int n = count - at_el < chunk ? count - at_el : chunk;
        size_t at = 0;
        memset(buf, 0, cap);
        size_t batch = at;
        begin_msg(buf, &at, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, AF_UNSPEC, seq++, NFNL_SUBSYS_NFTABLES);
        ((struct nlmsghdr *)(buf + batch))->nlmsg_len = (uint32_t)(at - batch);
        size_t msg = at;
        uint32_t msg_seq = seq++;
        begin_msg(buf, &at, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
                  NFPROTO_INET, msg_seq, 0);
        put_attr(buf, &at, NFTA_SET_ELEM_LIST_TABLE, table, strlen(table) + 1);
        put_attr(buf, &at, NFTA_SET_ELEM_LIST_SET, set, strlen(set) + 1);
        size_t list = begin_nest(buf, &at, NFTA_SET_ELEM_LIST_ELEMENTS);
        for (int i = 0; i < n; i++) {
            size_t el = begin_nest(buf, &at, NFTA_LIST_ELEM);
            size_t key = begin_nest(buf, &at, NFTA_SET_ELEM_KEY);
            put_attr(buf, &at, NFTA_DATA_VALUE, keys + (size_t)(at_el + i) * key_len, key_len);
            end_nest(buf, &at, key);
            end_nest(buf, &at, el);
        }
        end_nest(buf, &at, list);
        ((struct nlmsghdr *)(buf + msg))->nlmsg_len = (uint32_t)(at - msg);
        size_t end = at;
        begin_msg(buf, &at, NFNL_MSG_BATCH_END, NLM_F_REQUEST, AF_UNSPEC, seq++, NFNL_SUBSYS_NFTABLES);
        ((struct nlmsghdr *)(buf + end))->nlmsg_len = (uint32_t)(at - end);
        if (sendto(nl, buf, at, 0, (struct sockaddr *)&to, sizeof to) != (ssize_t)at) { e = errno; break; }
        // The acknowledgement of the elements message: an error of 0, or the reason.
        char reply[8192];
        for (;;) {
            ssize_t r = recv(nl, reply, sizeof reply, 0);
            if (r < 0) { if (errno == EINTR) continue; e = errno; break; }
            int done = 0;
            for (struct nlmsghdr *h = (struct nlmsghdr *)reply; NLMSG_OK(h, (size_t)r); h = NLMSG_NEXT(h, r)) {
                if (h->nlmsg_type == NLMSG_ERROR && h->nlmsg_seq == msg_seq) {
                    e = -((struct nlmsgerr *)NLMSG_DATA(h))->error;
                    done = 1;
                }
            }
            if (done) break;
        }
    }
    free(buf);
    close(nl);
    return e;
}

// ---- Multicast memberships -----------------------------------------------------------------

static void group_address(struct sockaddr_storage *ss, int family, const uint8_t *addr) {
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        memcpy(&a->sin_addr, addr, 4);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        memcpy(&a->sin6_addr, addr, 16);
    }
}

static void source_bytes(const struct sockaddr_storage *ss, uint8_t *out) {
    if (ss->ss_family == AF_INET) memcpy(out, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    else memcpy(out, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
}

int wb_mcast_filter(int fd, int family, uint32_t ifindex, const uint8_t *group, int *exclude, uint8_t *sources, int cap, int *count) {
    // struct group_filter with room for `cap` sources.
    size_t size = sizeof(struct group_filter) + (size_t)(cap > 1 ? cap - 1 : 0) * sizeof(struct sockaddr_storage);
    struct group_filter *gf = calloc(1, size);
    if (!gf) return ENOMEM;
    gf->gf_interface = ifindex;
    group_address(&gf->gf_group, family, group);
    gf->gf_numsrc = (uint32_t)cap;
    socklen_t len = (socklen_t)size;
    int level = family == AF_INET ? IPPROTO_IP : IPPROTO_IPV6;
    if (getsockopt(fd, level, MCAST_MSFILTER, gf, &len) != 0) { int e = errno; free(gf); return e; }
    *exclude = gf->gf_fmode == MCAST_EXCLUDE;
    int n = (int)gf->gf_numsrc;
    if (n > cap) n = cap;
    size_t step = family == AF_INET ? 4 : 16;
    for (int i = 0; i < n; i++) source_bytes(&gf->gf_slist[i], sources + (size_t)i * step);
    *count = (int)gf->gf_numsrc;
    free(gf);
    return 0;
}

int wb_mcast_join(int fd, int family, uint32_t ifindex, const uint8_t *group, int exclude, const uint8_t *sources, int count) {
    int level = family == AF_INET ? IPPROTO_IP : IPPROTO_IPV6;
    size_t step = family == AF_INET ? 4 : 16;
    if (exclude) {
        struct group_req r = { .gr_interface = ifindex };
        group_address(&r.gr_group, family, group);
        if (setsockopt(fd, level, MCAST_JOIN_GROUP, &r, sizeof r) != 0) return errno;
        for (int i = 0; i < count; i++) {
            struct group_source_req g = { .gsr_interface = ifindex };
            group_address(&g.gsr_group, family, group);
            group_address(&g.gsr_source, family, sources + (size_t)i * step);
            if (setsockopt(fd, level, MCAST_BLOCK_SOURCE, &g, sizeof g) != 0) return errno;
        }
        return 0;
    }
    for (int i = 0; i < count; i++) {
        struct group_source_req g = { .gsr_interface = ifindex };
        group_address(&g.gsr_group, family, group);
        group_address(&g.gsr_source, family, sources + (size_t)i * step);
        if (setsockopt(fd, level, MCAST_JOIN_SOURCE_GROUP, &g, sizeof g) != 0) return errno;
    }
    return 0;
}

int wb_sock_name(int fd, int peer, uint8_t *buf, uint32_t *len) {
    socklen_t l = *len;
    int r = peer ? getpeername(fd, (struct sockaddr *)buf, &l) : getsockname(fd, (struct sockaddr *)buf, &l);
    if (r != 0) return errno;
    *len = l;
    return 0;
}

int wb_sock_listening(int fd) {
    int v = 0;
    socklen_t l = sizeof v;
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) == 0 && v;
}

int wb_connect_raw(int fd, const uint8_t *addr, uint32_t len) {
    return connect(fd, (const struct sockaddr *)addr, len) == 0 ? 0 : errno;
}

int wb_close_reset(int fd) {
    struct linger l = { .l_onoff = 1, .l_linger = 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    return close(fd) == 0 ? 0 : errno;
}

int wb_accept_drop(int listener) {
    int n = 0;
    for (;;) {
        /* The copy shares the server's open file description: no O_NONBLOCK on it. */
        struct pollfd p = { .fd = listener, .events = POLLIN };
        if (poll(&p, 1, 0) != 1) return n;
        int c = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) return n;
        wb_close_reset(c);
        n++;
    }
}

int wb_tcp_destroy(const void *local, const void *peer) {
    const struct sockaddr *l = local, *p = peer;
    if (l->sa_family != p->sa_family || (l->sa_family != AF_INET && l->sa_family != AF_INET6)) return EAFNOSUPPORT;
    struct inet_diag_sockid id;
    memset(&id, 0, sizeof id);
    id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
    id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
    if (l->sa_family == AF_INET) {
        const struct sockaddr_in *a = local, *b = peer;
        id.idiag_sport = a->sin_port;
        id.idiag_dport = b->sin_port;
        memcpy(id.idiag_src, &a->sin_addr, 4);
        memcpy(id.idiag_dst, &b->sin_addr, 4);
    } else {
        const struct sockaddr_in6 *a = local, *b = peer;
        id.idiag_sport = a->sin6_port;
        id.idiag_dport = b->sin6_port;
        memcpy(id.idiag_src, &a->sin6_addr, 16);
        memcpy(id.idiag_dst, &b->sin6_addr, 16);
    }
    int nl = inet_diag_send(SOCK_DESTROY, NLM_F_ACK, l->sa_family, IPPROTO_TCP, &id);
    if (nl < 0) return -nl;
    int e = 0;
    char buffer[512];
    ssize_t n = recv(nl, buffer, sizeof buffer, 0);
    if (n < 0) e = errno;
    else if ((size_t)n >= sizeof(struct nlmsghdr) + sizeof(struct nlmsgerr) && ((struct nlmsghdr *)buffer)->nlmsg_type == NLMSG_ERROR)
        e = -((struct nlmsgerr *)NLMSG_DATA((struct nlmsghdr *)buffer))->error;
    close(nl);
    return e;
}
