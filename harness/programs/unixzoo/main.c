// harness-unixzoo DIR
//
// Holds Unix sockets of every kind and checks them after a restore. It makes:
//   - a stream pair with bytes queued both ways, SO_PASSCRED on one end and the other end
//     shut down for writing after its bytes;
//   - a datagram pair and a seqpacket pair with three messages of different sizes queued
//     (their boundaries must survive);
//   - a stream listener at DIR/listen (backlog 7) with one connection of its own waiting to
//     be accepted (the client sent nothing yet), and one accepted connection with bytes
//     queued on the server side;
//   - a datagram socket bound at DIR/dgram whose path was then unlinked, holding two
//     datagrams from an unnamed sender, and a client connected to it before the unlink;
//   - an abstract stream listener "@wb-unixzoo-PID" and an abstract datagram socket;
//   - an unbound datagram socket with SO_RCVBUF set, and an unconnected stream socket.
// Prints "READY pid=N" and answers each SIGUSR1 with "VERIFY OK" or "VERIFY FAIL <what>"
// (once: reading the queues takes them).
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <stddef.h>
#include <sys/un.h>
#include <unistd.h>

static char failures[2048];
static void fail(const char *what) { strcat(failures, " "); strcat(failures, what); }

static socklen_t unix_addr(struct sockaddr_un *a, const char *path, int abstract) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (abstract) {
        strncpy(a->sun_path + 1, path, sizeof a->sun_path - 2);
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(path));
    }
    strncpy(a->sun_path, path, sizeof a->sun_path - 1);
    return (socklen_t)sizeof *a;
}

static int expect_read(int fd, const char *want, const char *what) {
    char buf[256] = "";
    size_t len = strlen(want);
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n != (ssize_t)len || memcmp(buf, want, len) != 0) { fail(what); return 0; }
    return 1;
}

static int int_option(int fd, int level, int name) {
    int v = -1;
    socklen_t l = sizeof v;
    getsockopt(fd, level, name, &v, &l);
    return v;
}

static int name_is(int fd, const char *path, int abstract, int peer) {
    struct sockaddr_un a;
    socklen_t l = sizeof a;
    memset(&a, 0, sizeof a);
    if ((peer ? getpeername(fd, (struct sockaddr *)&a, &l) : getsockname(fd, (struct sockaddr *)&a, &l)) != 0) return 0;
    if (abstract) return a.sun_path[0] == 0 && l == offsetof(struct sockaddr_un, sun_path) + 1 + strlen(path) && !memcmp(a.sun_path + 1, path, strlen(path));
    return !strcmp(a.sun_path, path);
}

int main(int argc, char **argv) {
    harness_require(argc == 2, "usage: harness-unixzoo DIR");
    const char *dir = argv[1];
    char listen_path[256], dgram_path[256], abstract_name[64], abstract_dgram[64];
    snprintf(listen_path, sizeof listen_path, "%s/listen", dir);
    snprintf(dgram_path, sizeof dgram_path, "%s/dgram", dir);
    snprintf(abstract_name, sizeof abstract_name, "wb-unixzoo-%d", getpid());
    snprintf(abstract_dgram, sizeof abstract_dgram, "wb-unixzoo-dgram-%d", getpid());
    struct sockaddr_un a;
    socklen_t al;

    // Stream pair: bytes both ways, one end passes credentials, the other is shut for writing.
    int sp[2];
    harness_require(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0, "socketpair stream");
    int one = 1;
    harness_require(setsockopt(sp[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == 0, "SO_PASSCRED");
    harness_require(write(sp[0], "to-one", 6) == 6 && write(sp[1], "to-zero", 7) == 7, "stream pair writes");
    harness_require(shutdown(sp[1], SHUT_WR) == 0, "shutdown");

    // Datagram and seqpacket pairs with messages of 1, 5 and 300 bytes.
    int dp[2], qp[2];
    harness_require(socketpair(AF_UNIX, SOCK_DGRAM, 0, dp) == 0 && socketpair(AF_UNIX, SOCK_SEQPACKET, 0, qp) == 0, "socketpair dgram/seqpacket");
    static char big[300];
    memset(big, 'b', sizeof big);
    const char *msgs[3] = { "a", "fiver", big };
    size_t lens[3] = { 1, 5, sizeof big };
    for (int i = 0; i < 3; i++) {
        harness_require(send(dp[1], msgs[i], lens[i], 0) == (ssize_t)lens[i], "dgram send");
        harness_require(send(qp[1], msgs[i], lens[i], 0) == (ssize_t)lens[i], "seqpacket send");
    }

    // A named listener with one accepted connection and one waiting to be accepted.
    int listener = socket(AF_UNIX, SOCK_STREAM, 0);
    al = unix_addr(&a, listen_path, 0);
    harness_require(listener >= 0 && bind(listener, (struct sockaddr *)&a, al) == 0 && listen(listener, 7) == 0, "listener");
    int client1 = socket(AF_UNIX, SOCK_STREAM, 0);
    harness_require(connect(client1, (struct sockaddr *)&a, al) == 0, "connect 1");
    int server1 = accept(listener, NULL, NULL);
    harness_require(server1 >= 0, "accept");
    harness_require(write(client1, "hello-server", 12) == 12, "client write");
    int waiting = socket(AF_UNIX, SOCK_STREAM, 0);
    harness_require(connect(waiting, (struct sockaddr *)&a, al) == 0, "connect waiting");

    // A datagram socket whose path is gone, with two datagrams and a connected client.
    int named = socket(AF_UNIX, SOCK_DGRAM, 0);
    al = unix_addr(&a, dgram_path, 0);
    harness_require(named >= 0 && bind(named, (struct sockaddr *)&a, al) == 0, "bind dgram");
    int dclient = socket(AF_UNIX, SOCK_DGRAM, 0);
    harness_require(connect(dclient, (struct sockaddr *)&a, al) == 0, "connect dgram");
    int sender = socket(AF_UNIX, SOCK_DGRAM, 0);
    harness_require(sendto(sender, "first", 5, 0, (struct sockaddr *)&a, al) == 5, "sendto 1");
    harness_require(sendto(sender, "second!", 7, 0, (struct sockaddr *)&a, al) == 7, "sendto 2");
    close(sender);
    harness_require(unlink(dgram_path) == 0, "unlink dgram");

    // Abstract names.
    int alisten = socket(AF_UNIX, SOCK_STREAM, 0);
    al = unix_addr(&a, abstract_name, 1);
    harness_require(alisten >= 0 && bind(alisten, (struct sockaddr *)&a, al) == 0 && listen(alisten, 3) == 0, "abstract listener");
    int adgram = socket(AF_UNIX, SOCK_DGRAM, 0);
    al = unix_addr(&a, abstract_dgram, 1);
    harness_require(adgram >= 0 && bind(adgram, (struct sockaddr *)&a, al) == 0, "abstract dgram");

    // Unbound sockets.
    int lone = socket(AF_UNIX, SOCK_DGRAM, 0);
    int rcvbuf = 98304;
    harness_require(setsockopt(lone, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0, "SO_RCVBUF");
    int unconnected = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    harness_require(unconnected >= 0, "unconnected");

    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        failures[0] = 0;
        // Stream pair.
        expect_read(sp[0], "to-zero", "stream-pair-0");
        expect_read(sp[1], "to-one", "stream-pair-1");
        char c;
        if (recv(sp[0], &c, 1, MSG_DONTWAIT) != 0) fail("stream-pair-eof");
        if (int_option(sp[0], SOL_SOCKET, SO_PASSCRED) != 1) fail("passcred");
        if (send(sp[1], "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE) fail("shut-for-writing");
        if (write(sp[0], "back", 4) != 4) fail("stream-pair-still-writes");
        // Message boundaries.
        for (int i = 0; i < 3; i++) {
            char buf[512];
            if (recv(dp[0], buf, sizeof buf, MSG_DONTWAIT) != (ssize_t)lens[i] || memcmp(buf, msgs[i], lens[i])) fail(i == 0 ? "dgram-msg-0" : i == 1 ? "dgram-msg-1" : "dgram-msg-2");
            if (recv(qp[0], buf, sizeof buf, MSG_DONTWAIT) != (ssize_t)lens[i] || memcmp(buf, msgs[i], lens[i])) fail(i == 0 ? "seqpacket-msg-0" : i == 1 ? "seqpacket-msg-1" : "seqpacket-msg-2");
        }
        // The listener: the waiting connection is accepted now, the accepted one has its bytes.
        expect_read(server1, "hello-server", "accepted-bytes");
        if (!name_is(server1, listen_path, 0, 0) || !name_is(client1, listen_path, 0, 1)) fail("accepted-names");
        if (write(server1, "hi", 2) != 2) fail("accepted-write");
        expect_read(client1, "hi", "accepted-reply");
        if (!name_is(listener, listen_path, 0, 0)) fail("listener-name");
        int acc = accept4(listener, NULL, NULL, SOCK_NONBLOCK);
        if (acc < 0) fail("waiting-connection");
        else {
            if (write(waiting, "late", 4) != 4) fail("waiting-write");
            expect_read(acc, "late", "waiting-bytes");
        }
        // A new client can connect.
        int fresh = socket(AF_UNIX, SOCK_STREAM, 0);
        al = unix_addr(&a, listen_path, 0);
        if (connect(fresh, (struct sockaddr *)&a, al) != 0) fail("listener-accepts-new");
        close(fresh);
        // The unlinked datagram socket: its datagrams, its name, its path still gone.
        expect_read(named, "first", "dgram-1");
        expect_read(named, "second!", "dgram-2");
        if (!name_is(named, dgram_path, 0, 0)) fail("dgram-name");
        if (access(dgram_path, F_OK) == 0) fail("dgram-path-back");
        if (send(dclient, "via-client", 10, 0) != 10) fail("dgram-client-send");
        else expect_read(named, "via-client", "dgram-client");
        // Abstract names answer.
        if (!name_is(alisten, abstract_name, 1, 0)) fail("abstract-name");
        int ac = socket(AF_UNIX, SOCK_STREAM, 0);
        al = unix_addr(&a, abstract_name, 1);
        if (connect(ac, (struct sockaddr *)&a, al) != 0) fail("abstract-connect");
        close(ac);
        int as = socket(AF_UNIX, SOCK_DGRAM, 0);
        al = unix_addr(&a, abstract_dgram, 1);
        if (sendto(as, "abs", 3, 0, (struct sockaddr *)&a, al) != 3) fail("abstract-dgram-send");
        else expect_read(adgram, "abs", "abstract-dgram");
        close(as);
        // Unbound ones.
        if (int_option(lone, SOL_SOCKET, SO_RCVBUF) != 2 * rcvbuf) fail("rcvbuf");
        if (!(fcntl(unconnected, F_GETFL) & O_NONBLOCK)) fail("nonblock");
        if (int_option(unconnected, SOL_SOCKET, SO_TYPE) != SOCK_STREAM) fail("unconnected-type");
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
