// harness-netzoo
//
// Holds TCP and UDP sockets of IPv4 and IPv6 in the states and with the options a server
// has, and checks them after a restore. It makes, on loopback:
//   - a TCP listener (backlog 17) with SO_REUSEADDR, SO_KEEPALIVE and its timings, buffer
//     sizes, SO_LINGER, SO_PRIORITY, SO_MARK, SO_DONTROUTE, IP_TOS, IP_TTL, TCP_USER_TIMEOUT,
//     TCP_MAXSEG, TCP_WINDOW_CLAMP, TCP_THIN_LINEAR_TIMEOUTS and a classic
//     BPF filter, and an IPv6 listener with IPV6_V6ONLY;
//   - an established connection with bytes queued unread on both ends, TCP_NODELAY, TCP_INQ
//     and its own retransmission timers (TCP_RTO_MAX_MS, TCP_RTO_MIN_US, where the kernel has
//     them) on the client and the kernel's on the server, an IPv6 one likewise;
//   - a half-closed connection: the client sent "last-words" and shut down writing (FIN-WAIT-2),
//     the server has not read them (CLOSE-WAIT);
//   - a UDP socket holding three datagrams from two senders, a UDP socket connected to it, an
//     IPv6 UDP socket (IPV6_RECVHOPLIMIT, IPV6_RECVTCLASS), and an unbound TCP socket with
//     TCP_NODELAY.
// Prints "READY pid=N port=P" and answers each SIGUSR1 with "VERIFY OK" or
// "VERIFY FAIL <what>" (once: reading the queues takes them).
#define _GNU_SOURCE
#include "harness.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char failures[2048];
static void fail(const char *what) { strcat(failures, " "); strcat(failures, what); }

static int opt(int fd, int level, int name) {
    int v = -1;
    socklen_t l = sizeof v;
    if (getsockopt(fd, level, name, &v, &l) != 0) return -999;
    return v;
}

static void set(int fd, int level, int name, int v, const char *what) {
    harness_require(setsockopt(fd, level, name, &v, sizeof v) == 0, what);
}

// Linux 6.15's per-socket timers (Debian's headers lack them).
#ifndef TCP_RTO_MAX_MS
#define TCP_RTO_MAX_MS 44
#define TCP_RTO_MIN_US 45
#endif

static int port_of(int fd) {
    struct sockaddr_storage a;
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    return a.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&a)->sin_port) : ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
}

static socklen_t loop4(struct sockaddr_in *a, int port) {
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sizeof *a;
}

static socklen_t loop6(struct sockaddr_in6 *a, int port) {
    memset(a, 0, sizeof *a);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    a->sin6_addr = in6addr_loopback;
    return sizeof *a;
}

/// Reads exactly `want` within a few seconds (a rebuilt connection's peer may retransmit).
static int expect(int fd, const char *want, const char *what) {
    char buf[256] = "";
    size_t len = strlen(want), got = 0;
    uint64_t deadline = harness_now_ns() + 5000000000ULL;
    while (got < len && harness_now_ns() < deadline) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t n = recv(fd, buf + got, len - got, MSG_DONTWAIT);
        if (n <= 0) break;
        got += (size_t)n;
    }
    if (got != len || memcmp(buf, want, len) != 0) { fail(what); return 0; }
    return 1;
}

static int expect_eof(int fd, const char *what) {
    uint64_t deadline = harness_now_ns() + 5000000000ULL;
    while (harness_now_ns() < deadline) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 100) <= 0) continue;
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
        if (n == 0) return 1;
        break;
    }
    fail(what);
    return 0;
}

int main(void) {
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    // The listener and its options.
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    set(listener, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    set(listener, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
    set(listener, IPPROTO_TCP, TCP_KEEPIDLE, 77, "TCP_KEEPIDLE");
    set(listener, IPPROTO_TCP, TCP_KEEPINTVL, 11, "TCP_KEEPINTVL");
    set(listener, IPPROTO_TCP, TCP_KEEPCNT, 5, "TCP_KEEPCNT");
    set(listener, SOL_SOCKET, SO_RCVBUF, 65536, "SO_RCVBUF");
    set(listener, IPPROTO_IP, IP_TOS, 0x10, "IP_TOS");
    set(listener, SOL_SOCKET, SO_PRIORITY, 3, "SO_PRIORITY");   // after IP_TOS, which sets it too
    set(listener, SOL_SOCKET, SO_MARK, 7, "SO_MARK");
    set(listener, IPPROTO_IP, IP_TTL, 33, "IP_TTL");
    set(listener, IPPROTO_TCP, TCP_USER_TIMEOUT, 12345, "TCP_USER_TIMEOUT");
    set(listener, SOL_SOCKET, SO_DONTROUTE, 1, "SO_DONTROUTE");
    set(listener, IPPROTO_TCP, TCP_MAXSEG, 1200, "TCP_MAXSEG");
    set(listener, IPPROTO_TCP, TCP_WINDOW_CLAMP, 40000, "TCP_WINDOW_CLAMP");
    set(listener, IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS, 1, "TCP_THIN_LINEAR_TIMEOUTS");
    struct linger lg = { 1, 9 };
    harness_require(setsockopt(listener, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0, "SO_LINGER");
    struct sock_filter code[] = { BPF_STMT(BPF_RET | BPF_K, 0xffffffff) };
    struct sock_fprog prog = { .len = 1, .filter = code };
    harness_require(setsockopt(listener, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) == 0, "SO_ATTACH_FILTER");
    harness_require(bind(listener, (struct sockaddr *)&a4, loop4(&a4, 0)) == 0 && listen(listener, 17) == 0, "listen");
    int port = port_of(listener);

    int listener6 = socket(AF_INET6, SOCK_STREAM, 0);
    set(listener6, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
    harness_require(bind(listener6, (struct sockaddr *)&a6, loop6(&a6, 0)) == 0 && listen(listener6, 5) == 0, "listen6");
    int port6 = port_of(listener6);

    // An established connection, bytes queued both ways.
    int client = socket(AF_INET, SOCK_STREAM, 0);
    set(client, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
    set(client, IPPROTO_TCP, TCP_INQ, 1, "TCP_INQ");
    int rto = 7000, rtomin = 40000;
    int timers = setsockopt(client, IPPROTO_TCP, TCP_RTO_MAX_MS, &rto, sizeof rto) == 0
              && setsockopt(client, IPPROTO_TCP, TCP_RTO_MIN_US, &rtomin, sizeof rtomin) == 0;
    int kernelRTOMax = opt(client, IPPROTO_TCP, TCP_RTO_MAX_MS) == rto ? opt(listener, IPPROTO_TCP, TCP_RTO_MAX_MS) : -999;
    harness_require(connect(client, (struct sockaddr *)&a4, loop4(&a4, port)) == 0, "connect");
    int server = accept(listener, NULL, NULL);
    harness_require(server >= 0, "accept");
    harness_require(write(client, "to-server", 9) == 9 && write(server, "to-client", 9) == 9, "writes");

    // The same over IPv6.
    int client6 = socket(AF_INET6, SOCK_STREAM, 0);
    harness_require(connect(client6, (struct sockaddr *)&a6, loop6(&a6, port6)) == 0, "connect6");
    int server6 = accept(listener6, NULL, NULL);
    harness_require(server6 >= 0, "accept6");
    harness_require(write(client6, "six-up", 6) == 6 && write(server6, "six-down", 8) == 8, "writes6");

    // Half closed.
    int quitter = socket(AF_INET, SOCK_STREAM, 0);
    harness_require(connect(quitter, (struct sockaddr *)&a4, loop4(&a4, port)) == 0, "connect quitter");
    int left = accept(listener, NULL, NULL);
    harness_require(left >= 0, "accept quitter");
    harness_require(write(quitter, "last-words", 10) == 10 && shutdown(quitter, SHUT_WR) == 0, "quit");
    // The FIN arrives and is acknowledged (FIN-WAIT-2 / CLOSE-WAIT).
    usleep(50000);

    // UDP.
    int udp = socket(AF_INET, SOCK_DGRAM, 0), s1 = socket(AF_INET, SOCK_DGRAM, 0), s2 = socket(AF_INET, SOCK_DGRAM, 0);
    harness_require(bind(udp, (struct sockaddr *)&a4, loop4(&a4, 0)) == 0, "bind udp");
    int uport = port_of(udp);
    harness_require(bind(s1, (struct sockaddr *)&a4, loop4(&a4, 0)) == 0 && bind(s2, (struct sockaddr *)&a4, loop4(&a4, 0)) == 0, "bind senders");
    int p1 = port_of(s1), p2 = port_of(s2);
    loop4(&a4, uport);
    harness_require(sendto(s1, "one", 3, 0, (struct sockaddr *)&a4, sizeof a4) == 3, "sendto 1");
    harness_require(sendto(s2, "two!", 4, 0, (struct sockaddr *)&a4, sizeof a4) == 4, "sendto 2");
    harness_require(sendto(s1, "three", 5, 0, (struct sockaddr *)&a4, sizeof a4) == 5, "sendto 3");
    int uconn = socket(AF_INET, SOCK_DGRAM, 0);
    harness_require(connect(uconn, (struct sockaddr *)&a4, sizeof a4) == 0, "connect udp");
    int udp6 = socket(AF_INET6, SOCK_DGRAM, 0);
    set(udp6, IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1, "IPV6_RECVHOPLIMIT");
    set(udp6, IPPROTO_IPV6, IPV6_RECVTCLASS, 1, "IPV6_RECVTCLASS");
    harness_require(bind(udp6, (struct sockaddr *)&a6, loop6(&a6, 0)) == 0, "bind udp6");
    int uport6 = port_of(udp6);
    int lone = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    set(lone, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY lone");

    harness_verify_requests();
    harness_say("READY pid=%d port=%d port6=%d udp=%d", getpid(), port, port6, uport);
    for (;;) {
        harness_wait_for_request();
        failures[0] = 0;
        // Options.
        if (opt(listener, SOL_SOCKET, SO_ACCEPTCONN) != 1) fail("listening");
        if (opt(listener, SOL_SOCKET, SO_REUSEADDR) != 1) fail("SO_REUSEADDR");
        if (opt(listener, SOL_SOCKET, SO_KEEPALIVE) != 1) fail("SO_KEEPALIVE");
        if (opt(listener, IPPROTO_TCP, TCP_KEEPIDLE) != 77) fail("TCP_KEEPIDLE");
        if (opt(listener, IPPROTO_TCP, TCP_KEEPINTVL) != 11) fail("TCP_KEEPINTVL");
        if (opt(listener, IPPROTO_TCP, TCP_KEEPCNT) != 5) fail("TCP_KEEPCNT");
        if (opt(listener, SOL_SOCKET, SO_RCVBUF) != 131072) fail("SO_RCVBUF");
        if (opt(listener, SOL_SOCKET, SO_PRIORITY) != 3) fail("SO_PRIORITY");
        if (opt(listener, SOL_SOCKET, SO_MARK) != 7) fail("SO_MARK");
        if (opt(listener, IPPROTO_IP, IP_TOS) != 0x10) fail("IP_TOS");
        if (opt(listener, IPPROTO_IP, IP_TTL) != 33) fail("IP_TTL");
        if (opt(listener, IPPROTO_TCP, TCP_USER_TIMEOUT) != 12345) fail("TCP_USER_TIMEOUT");
        if (opt(listener, SOL_SOCKET, SO_DONTROUTE) != 1) fail("SO_DONTROUTE");
        if (opt(listener, IPPROTO_TCP, TCP_MAXSEG) != 1200) fail("TCP_MAXSEG");
        if (opt(listener, IPPROTO_TCP, TCP_WINDOW_CLAMP) != 40000) fail("TCP_WINDOW_CLAMP");
        if (opt(listener, IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS) != 1) fail("TCP_THIN_LINEAR_TIMEOUTS");
        if (opt(udp6, IPPROTO_IPV6, IPV6_RECVHOPLIMIT) != 1 || opt(udp6, IPPROTO_IPV6, IPV6_RECVTCLASS) != 1) fail("udp6-options");
        struct linger l2 = { 0, 0 };
        socklen_t ll = sizeof l2;
        if (getsockopt(listener, SOL_SOCKET, SO_LINGER, &l2, &ll) != 0 || l2.l_onoff != 1 || l2.l_linger != 9) fail("SO_LINGER");
        socklen_t flen = 0;
        if (getsockopt(listener, SOL_SOCKET, SO_GET_FILTER, NULL, &flen) != 0 || flen != 1) fail("filter");
        if (opt(listener6, IPPROTO_IPV6, IPV6_V6ONLY) != 1) fail("IPV6_V6ONLY");
        if (port_of(listener) != port || port_of(listener6) != port6) fail("ports");
        if (opt(client, IPPROTO_TCP, TCP_NODELAY) != 1) fail("client-nodelay");
        if (opt(client, IPPROTO_TCP, TCP_INQ) != 1) fail("client-inq");
        if (timers && (opt(client, IPPROTO_TCP, TCP_RTO_MAX_MS) != 7000 || opt(client, IPPROTO_TCP, TCP_RTO_MIN_US) != 40000)) fail("client-timers");
        if (timers && opt(server, IPPROTO_TCP, TCP_RTO_MAX_MS) != kernelRTOMax) fail("server-rto-max");
        if (opt(lone, IPPROTO_TCP, TCP_NODELAY) != 1 || !(fcntl(lone, F_GETFL) & O_NONBLOCK)) fail("lone");
        // The established connections go on.
        expect(server, "to-server", "server-queue");
        expect(client, "to-client", "client-queue");
        if (write(client, "ping", 4) != 4) fail("client-write");
        expect(server, "ping", "ping");
        if (write(server, "pong", 4) != 4) fail("server-write");
        expect(client, "pong", "pong");
        expect(server6, "six-up", "server6-queue");
        expect(client6, "six-down", "client6-queue");
        if (write(client6, "v6", 2) != 2) fail("client6-write");
        expect(server6, "v6", "v6-ping");
        // The half-closed one: its last words, end of file, and the way back still open.
        expect(left, "last-words", "half-closed-bytes");
        expect_eof(left, "half-closed-eof");
        if (write(left, "reply", 5) != 5) fail("half-closed-write");
        expect(quitter, "reply", "half-closed-reply");
        close(left);
        left = -1;
        expect_eof(quitter, "half-closed-close");
        // UDP: three datagrams from their senders, in order.
        const char *want[3] = { "one", "two!", "three" };
        int from[3] = { p1, p2, p1 };
        for (int i = 0; i < 3; i++) {
            char buf[64] = "";
            struct sockaddr_in src;
            socklen_t sl = sizeof src;
            struct pollfd p = { .fd = udp, .events = POLLIN };
            poll(&p, 1, 1000);
            ssize_t n = recvfrom(udp, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&src, &sl);
            if (n != (ssize_t)strlen(want[i]) || memcmp(buf, want[i], (size_t)n) || ntohs(src.sin_port) != from[i]) fail(i == 0 ? "udp-1" : i == 1 ? "udp-2" : "udp-3");
        }
        if (send(uconn, "conn", 4, 0) != 4) fail("udp-connected-send");
        else expect(udp, "conn", "udp-connected");
        if (port_of(udp6) != uport6) fail("udp6-port");
        // New clients are served.
        int fresh = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fresh, (struct sockaddr *)&a4, loop4(&a4, port)) != 0) fail("new-client");
        else {
            int acc = accept(listener, NULL, NULL);
            if (acc < 0) fail("new-accept");
            close(acc);
        }
        close(fresh);
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
