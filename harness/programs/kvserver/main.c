// harness-kvserver [--epoll] [--port P | --unix PATH]: a small key-value server over TCP
// (or a Unix stream socket), a fuzz target for servers. It listens on 127.0.0.1 (a port the
// kernel picks, or P) or on PATH, prints "READY port=P pid=N", and serves one connection at a time with blocking calls (accept,
// read), or with --epoll, every connection at once from an epoll loop on non-blocking
// sockets. Each read is one message:
//
//   HELLO NAME      must come first on a connection ("WELCOME NAME"; anything else: "ERR" and close)
//   SET KEY VALUE   "OK"
//   GET KEY         "VALUE ..." or "NONE"
//   DEL KEY         "DELETED"
//
// The planted bug: DEL of a key that is not in the table uses the entry it did not find,
// and crashes in delete_entry(). Only a connection that said HELLO first gets that far.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct entry {
    char key[32];
    char *value;
};

static struct entry table[16];

static struct entry *find(const char *key) {
    for (int i = 0; i < 16; i++)
        if (table[i].value && strcmp(table[i].key, key) == 0) return &table[i];
    return NULL;
}

__attribute__((noinline)) static void delete_entry(struct entry *e) {
    free(e->value);
    e->value = NULL;
}

static void reply(int fd, const char *text) {
    ssize_t n = write(fd, text, strlen(text));
    (void)n;
}

struct session {
    int fd;
    int greeted;
};

// One message; returns 0 when the connection is to be closed.
static int handle(struct session *s, char *msg, size_t n) {
    msg[n] = 0;
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    if (!s->greeted) {
        if (strncmp(msg, "HELLO ", 6) != 0) {
            reply(s->fd, "ERR say HELLO first\n");
            return 0;
        }
        s->greeted = 1;
        reply(s->fd, "WELCOME\n");
        return 1;
    }
    char *key = msg + 4;
    if (n > 4 && key[strcspn(key, " ")] == ' ') key[strcspn(key, " ")] = 0;
    if (strncmp(msg, "SET ", 4) == 0 && strlen(key) < 32) {
        char *value = key + strlen(key) + (key + strlen(key) < msg + n ? 1 : 0);
        struct entry *e = find(key);
        for (int i = 0; !e && i < 16; i++)
            if (!table[i].value) e = &table[i];
        if (!e) { reply(s->fd, "FULL\n"); return 1; }
        free(e->value);
        strcpy(e->key, key);
        e->value = strdup(value);
        reply(s->fd, "OK\n");
    } else if (strncmp(msg, "GET ", 4) == 0) {
        struct entry *e = find(key);
        reply(s->fd, e ? e->value : "NONE");
        reply(s->fd, "\n");
    } else if (strncmp(msg, "DEL ", 4) == 0) {
        struct entry *e = find(key);
        delete_entry(e);  // the bug: e is NULL for a key that is not there
        reply(s->fd, "DELETED\n");
    } else {
        reply(s->fd, "ERR unknown command\n");
    }
    return 1;
}

static void serve_blocking(int listener) {
    char buffer[4096];
    for (;;) {
        int c = accept(listener, NULL, NULL);
        if (c < 0) continue;
        struct session s = {c, 0};
        for (;;) {
            ssize_t n = read(c, buffer, sizeof buffer - 1);
            if (n <= 0 || !handle(&s, buffer, (size_t)n)) break;
        }
        close(c);
    }
}

static void serve_epoll(int listener) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    fcntl(listener, F_SETFL, O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    char buffer[4096];
    for (;;) {
        struct epoll_event ready[16];
        int k = epoll_wait(ep, ready, 16, 1000);
        for (int i = 0; i < k; i++) {
            struct session *s = ready[i].data.ptr;
            if (!s) {
                int c;
                while ((c = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    s = calloc(1, sizeof *s);
                    s->fd = c;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = s};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
                continue;
            }
            int open = 1;
            for (;;) {
                ssize_t n = read(s->fd, buffer, sizeof buffer - 1);
                if (n < 0 && errno == EAGAIN) break;
                if (n <= 0 || !handle(s, buffer, (size_t)n)) { open = 0; break; }
            }
            if (!open) {
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                close(s->fd);
                free(s);
            }
        }
    }
}

int main(int argc, char **argv) {
    int use_epoll = 0, port = 0;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--epoll") == 0) use_epoll = 1;
        else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--unix") == 0 && i + 1 < argc) path = argv[++i];
    }
    static char seeded[] = "seeded";
    strcpy(table[0].key, "a");
    table[0].value = strdup(seeded);
    if (path) {
        int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un u = {.sun_family = AF_UNIX};
        snprintf(u.sun_path, sizeof u.sun_path, "%s", path);
        unlink(path);
        if (bind(listener, (struct sockaddr *)&u, sizeof u) != 0 || listen(listener, 64) != 0) {
            perror("harness-kvserver: bind");
            return 1;
        }
        printf("READY port=0 pid=%d\n", getpid());
        fflush(stdout);
        if (use_epoll) serve_epoll(listener);
        else serve_blocking(listener);
        return 0;
    }
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&a, sizeof a) != 0 || listen(listener, 64) != 0) {
        perror("harness-kvserver: bind");
        return 1;
    }
    socklen_t l = sizeof a;
    getsockname(listener, (struct sockaddr *)&a, &l);
    printf("READY port=%d pid=%d\n", ntohs(a.sin_port), getpid());
    fflush(stdout);
    if (use_epoll) serve_epoll(listener);
    else serve_blocking(listener);
    return 0;
}
