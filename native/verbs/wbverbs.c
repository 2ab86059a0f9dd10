// libwbverbs.so: preloaded by `wb run --ib`. It stands in front of libibverbs and presents an
// emulated HCA, wbsoft0, that carries verbs traffic over TCP (RC, UC) and UDP (UD) between
// processes, on one host or many. Everything the device knows lives in the process's own
// memory, threads, sockets and pipes, so a checkpoint of the process (or of a job's set, whose
// TCP connections wb takes in repair mode) holds the verbs state exactly: QPs, MRs, CQs with
// their completions, receives posted, sends posted and not yet acknowledged, bytes in flight.
//
// The application gets this library's own ibv_context, whose ops table carries the data path
// (post_send, post_recv, post_srq_recv, poll_cq, req_notify_cq are static inline in verbs.h and
// call through it); the control path (device list, open, PD, MR, CQ, QP, SRQ, AH, channels)
// is interposed by name. IDs the application sees (LID, GID, QP numbers, keys) are the
// device's own and stay the same in a restored process.
//
// Fabric: each process's device takes a LID and publishes where it listens in a file
// WB_IB_FABRIC/lid-N ("tcp-port udp-port address..."); a QP moved to RTR with a peer's LID and
// QP number connects to that peer's listener. The wire protocol is in wbverbs_wire.h.
#define _GNU_SOURCE
#include "wbverbs_state.h"
#include "wbverbs_wire.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include <infiniband/verbs.h>
#include <linux/sockios.h>

#undef ibv_reg_mr
#undef ibv_reg_mr_iova
#undef ibv_query_port

#define EXPORT __attribute__((visibility("default")))
#define MAX_SGE 32
#define MAX_INLINE 1024

// ---- objects -------------------------------------------------------------------------

struct wb_mr {
    struct ibv_mr mr;
    uint64_t iova;
    int access;
    struct wb_state_record *rec;
    struct wb_mr *next;
};

struct wb_channel {
    struct ibv_comp_channel channel;
    int write_fd;
};

struct wb_cq {
    struct ibv_cq cq;
    struct ibv_wc *ring;
    uint32_t cap, head, count;
    int armed;
    struct wb_state_record *rec;
    struct wb_cq *next;
};

struct wb_recv {
    uint64_t wr_id;
    int num_sge;
    struct ibv_sge sge[MAX_SGE];
};

struct wb_rq {
    struct wb_recv *ring;
    uint32_t cap, head, count;
};

struct wb_srq {
    struct ibv_srq srq;
    struct wb_rq rq;
    uint32_t max_wr, max_sge, limit;
    struct wb_state_record *rec;
    struct wb_srq *next;
};

struct wb_ah {
    struct ibv_ah ah;
    struct ibv_ah_attr attr;
    struct wb_state_record *rec;
};

struct wb_pd {
    struct ibv_pd pd;
    struct wb_state_record *rec;
};

// A request sent and not yet answered (RC), oldest first.
struct wb_out {
    uint64_t wr_id;
    enum ibv_wc_opcode opcode;
    int signaled;
    uint32_t len;
    int num_sge;
    struct ibv_sge sge[MAX_SGE];
};

// A request received that waits for a receive to be posted, with those behind it (RNR).
struct wb_held {
    struct wb_hdr hdr;
    uint8_t *data;
    struct wb_held *next;
};

struct wb_conn {
    int fd;
    uint8_t *outbuf;     // responses not yet written (written without blocking)
    size_t outlen, outcap;
    size_t ack_at;       // where in outbuf the last response is a success ACK (SIZE_MAX: none)
    struct wb_hdr next;  // the next request's header, as far as it came with the last payload
    uint32_t next_have;
};

struct wb_qp {
    struct ibv_qp qp;
    struct ibv_qp_init_attr init;
    struct ibv_qp_attr attr;       // what modify_qp set, for query_qp
    struct wb_rq rq;
    struct wb_out *outq;
    uint32_t out_cap, out_head, out_count;
    pthread_mutex_t send_lock;     // one writer of requests at a time, in post order
    int out_fd;                    // requests to the peer, responses from it (RC, UC)
    struct wb_conn in;             // requests from the peer, responses to it
    struct wb_held *held, *held_tail;
    uint32_t held_count;
    uint64_t rnr_deadline;         // when the held request's RNR retries run out (0: never)
    uint64_t retry_deadline;       // the peer is gone: when the requests it did not answer fail
                                   // with IBV_WC_RETRY_EXC_ERR (0: not armed, or never)
    int in_broken;                 // an RNR NAK ended the requester's QP: drop what still comes
    int pull;                      // the peer is on this host and can read this process's memory:
                                   // large payloads stay here and the responder pulls them
    pid_t in_pid;                  // the process that holds the other end of `in`, when it is on
                                   // this host and that was verified (pulls come only from it)
    int sq_sig_all;
    struct wb_state_record *rec;
    struct wb_qp *next;
};

struct wb_context {
    struct ibv_context context;
    int async_write_fd;
};

// The device: one per process, shared by every context opened on it.
static struct {
    pthread_mutex_t lock;
    int started;
    uint16_t lid;
    uint16_t tcp_port, udp_port;
    int listen_fd, udp_fd;
    int wake[2];
    pthread_t thread;
    uint32_t next_qpn, next_key, next_handle;
    // UD: one TCP connection to each device this one sends datagrams to, and those from each
    // device that sends here (reliable and ordered, and held and repaired by a checkpoint).
    pthread_mutex_t ud_lock;
    struct { uint16_t lid; int fd; } ud_out[256];
    int ud_out_count;
    int ud_in[256];
    int ud_in_count;
    struct wb_qp *qps;
    struct wb_cq *cqs;
    struct wb_srq *srqs;
    struct wb_mr *mrs;
    char fabric[256];
} dev = {.lock = PTHREAD_MUTEX_INITIALIZER, .ud_lock = PTHREAD_MUTEX_INITIALIZER, .listen_fd = -1, .udp_fd = -1, .wake = {-1, -1}};

static struct ibv_device wbsoft = {
    .node_type = IBV_NODE_CA,
    .transport_type = IBV_TRANSPORT_IB,
    .name = "wbsoft0",
    .dev_name = "uverbs-wbsoft0",
    .dev_path = "/sys/class/infiniband_verbs/uverbs-wbsoft0",
    .ibdev_path = "/sys/class/infiniband/wbsoft0",
};

static const uint64_t node_guid = 0x7762736f66740000ull; // "wbsoft"

// ---- what a checkpoint sees (wbverbs_state.h) ----------------------------------------

// In the library's own zero-filled data, page-aligned: wb finds it in an image by its magic
// at a page start of a writable mapping of libwbverbs.so (pages never used cost nothing).
static struct {
    struct wb_state_header header;
    struct wb_state_record records[WB_STATE_RECORDS];
} area __attribute__((aligned(4096)));

static struct wb_state_header *state;

static void state_open(void) {
    state = &area.header;
    memcpy(state->magic, WB_STATE_MAGIC, 8);
    state->version = 1;
    state->capacity = WB_STATE_RECORDS;
    snprintf(state->device, sizeof state->device, "wbsoft0");
}

static struct wb_state_record *records(void) { return (struct wb_state_record *)(state + 1); }

// A record for a new object (dev.lock held); NULL when there is no room (counted).
static struct wb_state_record *state_new(uint8_t kind, uint32_t id) {
    if (!state) return NULL;
    struct wb_state_record *r = NULL;
    for (uint32_t i = 0; i < state->used; i++)
        if (records()[i].kind == WB_REC_FREE) { r = &records()[i]; break; }
    if (!r && state->used < state->capacity) r = &records()[state->used++];
    if (!r) { state->overflow++; return NULL; }
    memset(r, 0, sizeof *r);
    r->id = id;
    r->kind = kind;
    return r;
}

static void state_free(struct wb_state_record *r) {
    if (r) memset(r, 0, sizeof *r);
}

// ---- small helpers -------------------------------------------------------------------

static int write_all(int fd, const void *buf, size_t len) {
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int writev_all(int fd, struct iovec *iov, int cnt) {
    while (cnt > 0) {
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
        ssize_t n = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        size_t left = (size_t)n;
        while (cnt > 0 && left >= iov->iov_len) { left -= iov->iov_len; iov++; cnt--; }
        if (cnt > 0) { iov->iov_base = (uint8_t *)iov->iov_base + left; iov->iov_len -= left; }
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len) {
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, MSG_WAITALL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void discard(int fd, size_t len) {
    uint8_t scratch[4096];
    while (len > 0) {
        size_t n = len < sizeof scratch ? len : sizeof scratch;
        if (read_all(fd, scratch, n) < 0) return;
        len -= n;
    }
}

static int ioctl_fionread(int fd, int *avail) {
    return ioctl(fd, FIONREAD, avail);
}

static void wake_progress(void) {
    char c = 1;
    ssize_t r;
    do { r = write(dev.wake[1], &c, 1); } while (r < 0 && errno == EINTR);
}

static uint32_t qp_recvs(struct wb_qp *qp);

// The QP's record follows its queues (dev.lock held).
static void qp_sync(struct wb_qp *qp) {
    struct wb_state_record *r = qp->rec;
    if (r) {
        r->state = (uint8_t)qp->attr.qp_state;
        r->sends = qp->out_count;
        r->recvs = qp_recvs(qp);
        r->held = qp->held_count;
        r->peer_lid = qp->attr.ah_attr.dlid;
        r->key = qp->qp.qp_type == IBV_QPT_UD ? qp->attr.qkey : qp->attr.dest_qp_num;
    }
}

static struct wb_qp *find_qp(uint32_t qpn) {
    for (struct wb_qp *q = dev.qps; q; q = q->next)
        if (q->qp.qp_num == qpn) return q;
    return NULL;
}

// The MR that holds [addr, addr+len) for this key and access (remote access by iova).
static uint8_t *mr_translate(uint32_t key, int remote, uint64_t addr, uint64_t len, int need) {
    for (struct wb_mr *m = dev.mrs; m; m = m->next) {
        if ((remote ? m->mr.rkey : m->mr.lkey) != key) continue;
        uint64_t base = remote ? m->iova : (uint64_t)(uintptr_t)m->mr.addr;
        if (addr < base || addr - base > m->mr.length || len > m->mr.length - (addr - base)) return NULL;
        if (need && !(m->access & need)) return NULL;
        return (uint8_t *)m->mr.addr + (addr - base);
    }
    return NULL;
}

static int sges_valid(const struct ibv_sge *sge, int n, int need) {
    for (int i = 0; i < n; i++)
        if (sge[i].length && !mr_translate(sge[i].lkey, 0, sge[i].addr, sge[i].length, need)) return 0;
    return 1;
}

static uint64_t sge_total(const struct ibv_sge *sge, int n) {
    uint64_t t = 0;
    for (int i = 0; i < n; i++) t += sge[i].length;
    return t;
}

// ---- completion queues ---------------------------------------------------------------

static void cq_push(struct wb_cq *cq, const struct ibv_wc *wc) {
    if (cq->count == cq->cap) {
        uint32_t cap = cq->cap * 2;
        struct ibv_wc *ring = malloc(sizeof *ring * cap);
        if (!ring) return;
        for (uint32_t i = 0; i < cq->count; i++) ring[i] = cq->ring[(cq->head + i) % cq->cap];
        free(cq->ring);
        cq->ring = ring;
        cq->cap = cap;
        cq->head = 0;
    }
    cq->ring[(cq->head + cq->count) % cq->cap] = *wc;
    __atomic_store_n(&cq->count, cq->count + 1, __ATOMIC_RELEASE);
    if (cq->rec) cq->rec->completions = cq->count;
    if (cq->armed && cq->cq.channel) {
        cq->armed = 0;
        struct wb_channel *ch = (struct wb_channel *)cq->cq.channel;
        struct ibv_cq *p = &cq->cq;
        ssize_t r;
        do { r = write(ch->write_fd, &p, sizeof p); } while (r < 0 && errno == EINTR);
    }
}

static void complete(struct wb_qp *qp, int recv, uint64_t wr_id, enum ibv_wc_status status,
                     enum ibv_wc_opcode opcode, uint32_t len, uint32_t imm, int flags, uint32_t src_qp, uint16_t slid) {
    struct ibv_wc wc = {
        .wr_id = wr_id, .status = status, .opcode = opcode, .byte_len = len, .imm_data = imm,
        .qp_num = qp->qp.qp_num, .src_qp = src_qp, .wc_flags = flags, .slid = slid,
    };
    cq_push((struct wb_cq *)(recv ? qp->qp.recv_cq : qp->qp.send_cq), &wc);
}

// ---- receive queues ------------------------------------------------------------------

static int rq_push(struct wb_rq *rq, const struct ibv_recv_wr *wr) {
    if (wr->num_sge > MAX_SGE || wr->num_sge < 0) return EINVAL;
    if (rq->count == rq->cap) {
        uint32_t cap = rq->cap ? rq->cap * 2 : 64;
        struct wb_recv *ring = malloc(sizeof *ring * cap);
        if (!ring) return ENOMEM;
        for (uint32_t i = 0; i < rq->count; i++) ring[i] = rq->ring[(rq->head + i) % rq->cap];
        free(rq->ring);
        rq->ring = ring;
        rq->cap = cap;
        rq->head = 0;
    }
    struct wb_recv *r = &rq->ring[(rq->head + rq->count) % rq->cap];
    r->wr_id = wr->wr_id;
    r->num_sge = wr->num_sge;
    memcpy(r->sge, wr->sg_list, sizeof(struct ibv_sge) * (size_t)wr->num_sge);
    rq->count++;
    return 0;
}

static struct wb_rq *qp_rq(struct wb_qp *qp) {
    return qp->qp.srq ? &((struct wb_srq *)qp->qp.srq)->rq : &qp->rq;
}

static uint32_t qp_recvs(struct wb_qp *qp) {
    if (qp->qp.srq) {
        struct wb_srq *srq = (struct wb_srq *)qp->qp.srq;
        if (srq->rec) srq->rec->recvs = srq->rq.count;
        return 0;
    }
    return qp->rq.count;
}

static int rq_pop(struct wb_rq *rq, struct wb_recv *out) {
    if (rq->count == 0) return 0;
    *out = rq->ring[rq->head];
    rq->head = (rq->head + 1) % rq->cap;
    rq->count--;
    return 1;
}

// Copy data into a receive's scatter list; the bytes that did not fit are the error.
static int scatter(const struct wb_recv *r, uint32_t offset, const uint8_t *data, uint32_t len) {
    uint64_t room = sge_total(r->sge, r->num_sge);
    if ((uint64_t)offset + len > room) return -1;
    for (int i = 0; i < r->num_sge && len > 0; i++) {
        uint32_t l = r->sge[i].length;
        if (offset >= l) { offset -= l; continue; }
        uint32_t n = l - offset < len ? l - offset : len;
        uint8_t *dst = mr_translate(r->sge[i].lkey, 0, r->sge[i].addr + offset, n, 0);
        if (!dst) return -1;
        memcpy(dst, data, n);
        data += n;
        len -= n;
        offset = 0;
    }
    return 0;
}

// ---- responder: requests from a peer -------------------------------------------------

static void conn_flush(struct wb_conn *c);
static uint64_t now_ns(void);

static void respond(struct wb_qp *qp, uint8_t op, uint16_t status, uint64_t value, const void *data, uint32_t len) {
    struct wb_conn *c = &qp->in;
    if (c->fd < 0 || qp->qp.qp_type != IBV_QPT_RC) return;
    // Successive successful ACKs not yet written become one, counting the requests.
    if (op == WB_ACK && status == 0 && c->ack_at != SIZE_MAX && c->ack_at + sizeof(struct wb_hdr) == c->outlen) {
        ((struct wb_hdr *)(c->outbuf + c->ack_at))->a++;
        return;
    }
    if (op == WB_ACK) value = 1;
    struct wb_hdr h = {.op = op, .status = status, .len = len, .a = value};
    size_t need = c->outlen + sizeof h + len;
    if (need > c->outcap) {
        size_t cap = c->outcap ? c->outcap : 4096;
        while (cap < need) cap *= 2;
        uint8_t *b = realloc(c->outbuf, cap);
        if (!b) return;
        c->outbuf = b;
        c->outcap = cap;
    }
    c->ack_at = op == WB_ACK && status == 0 ? c->outlen : SIZE_MAX;
    memcpy(c->outbuf + c->outlen, &h, sizeof h);
    if (len) memcpy(c->outbuf + c->outlen + sizeof h, data, len);
    c->outlen += sizeof h + len;
    // The progress thread writes a batch's answers when it has taken the batch; others now.
    if (pthread_equal(pthread_self(), dev.thread) && c->outlen < 65536) return;
    conn_flush(c);
    if (c->outlen > 0 && !pthread_equal(pthread_self(), dev.thread)) wake_progress();
}

// Responses are written without blocking; what does not fit now the progress thread writes
// when the socket has room (two responders never wait on each other).
static void conn_flush(struct wb_conn *c) {
    while (c->outlen > 0) {
        ssize_t n = send(c->fd, c->outbuf, c->outlen, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        memmove(c->outbuf, c->outbuf + n, c->outlen - (size_t)n);
        c->outlen -= (size_t)n;
        c->ack_at = SIZE_MAX;
    }
}

// Closes a QP's inbound connection (destroy, or the process's exit with QPs open) so that
// every answer for a request done here reaches the peer: the progress thread writes a batch's
// ACKs after the batch, by when the application may have polled the completions and be
// closing. The answers still buffered are written, then the close waits until the peer's
// kernel has them all (SIOCOUTQ), reading away requests that will not be served: a socket
// closed with unread bytes resets the connection, and a reset drops what it had not yet
// delivered. The peer fails those unserved requests when its retries run out, as on a fabric.
// Bounded by `until` (now_ns): a peer that takes nothing is not waited for. dev.lock held.
static void conn_close(struct wb_conn *c, uint64_t until) {
    if (c->fd < 0) return;
    for (;;) {
        conn_flush(c);
        uint8_t scratch[4096];
        while (recv(c->fd, scratch, sizeof scratch, MSG_DONTWAIT) > 0) {}
        int queued = 0;
        if (c->outlen == 0 && (ioctl(c->fd, SIOCOUTQ, &queued) < 0 || queued == 0)) break;
        if (now_ns() >= until) break;
        struct pollfd p = {c->fd, POLLIN | (c->outlen ? POLLOUT : 0), 0};
        poll(&p, 1, 2);
    }
    close(c->fd);
    c->fd = -1;
    c->outlen = 0;
}

// Carry out one request whose payload is in memory. Returns 0 when it had to wait (no receive).
static int execute(struct wb_qp *qp, const struct wb_hdr *h, const uint8_t *data) {
    int imm = h->op == WB_SEND_IMM || h->op == WB_WRITE_IMM;
    switch (h->op) {
    case WB_SEND:
    case WB_SEND_IMM: {
        struct wb_recv r;
        if (!rq_pop(qp_rq(qp), &r)) return 0;
        int bad = scatter(&r, 0, data, h->len) < 0;
        complete(qp, 1, r.wr_id, bad ? IBV_WC_LOC_LEN_ERR : IBV_WC_SUCCESS, IBV_WC_RECV, h->len,
                 h->imm, imm ? IBV_WC_WITH_IMM : 0, 0, 0);
        respond(qp, WB_ACK, bad ? IBV_WC_REM_INV_REQ_ERR : 0, 0, NULL, 0);
        return 1;
    }
    case WB_WRITE:
    case WB_WRITE_IMM: {
        uint8_t *dst = h->len ? mr_translate(h->rkey, 1, h->addr, h->len, IBV_ACCESS_REMOTE_WRITE) : NULL;
        if (h->len && !dst) { respond(qp, WB_ACK, IBV_WC_REM_ACCESS_ERR, 0, NULL, 0); return 1; }
        struct wb_recv r;
        if (imm && !rq_pop(qp_rq(qp), &r)) return 0;
        if (h->len) memcpy(dst, data, h->len);
        if (imm) complete(qp, 1, r.wr_id, IBV_WC_SUCCESS, IBV_WC_RECV_RDMA_WITH_IMM, h->len, h->imm, IBV_WC_WITH_IMM, 0, 0);
        respond(qp, WB_ACK, 0, 0, NULL, 0);
        return 1;
    }
    case WB_READ: {
        uint8_t *src = h->len ? mr_translate(h->rkey, 1, h->addr, h->len, IBV_ACCESS_REMOTE_READ) : NULL;
        if (h->len && !src) { respond(qp, WB_READ_RESP, IBV_WC_REM_ACCESS_ERR, 0, NULL, 0); return 1; }
        if (h->flags & WB_FLAG_PULL) {
            // On one host: the data goes straight into the requester's buffer (only into the
            // process verified to hold the other end of this connection).
            struct iovec l = {src, h->len}, r = {(void *)(uintptr_t)h->a, h->len};
            ssize_t n = qp->in_pid && (pid_t)h->b == qp->in_pid ? process_vm_writev(qp->in_pid, &l, 1, &r, 1, 0) : -1;
            respond(qp, WB_READ_RESP, n == (ssize_t)h->len ? 0 : IBV_WC_REM_OP_ERR, 0, NULL, 0);
            return 1;
        }
        respond(qp, WB_READ_RESP, 0, 0, src, h->len);
        return 1;
    }
    case WB_CAS:
    case WB_FADD: {
        uint64_t *p = (h->addr & 7) ? NULL : (uint64_t *)mr_translate(h->rkey, 1, h->addr, 8, IBV_ACCESS_REMOTE_ATOMIC);
        if (!p) { respond(qp, WB_ATOMIC_RESP, IBV_WC_REM_ACCESS_ERR, 0, NULL, 0); return 1; }
        uint64_t old;
        if (h->op == WB_FADD) old = __atomic_fetch_add(p, h->a, __ATOMIC_SEQ_CST);
        else {
            old = h->a;
            __atomic_compare_exchange_n(p, &old, h->b, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        }
        respond(qp, WB_ATOMIC_RESP, 0, old, NULL, 0);
        return 1;
    }
    }
    return 1;
}

// Requests held for want of a receive go on in order once receives are posted.
static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

// The responder's RNR timer (its min_rnr_timer, IB's encoding) in nanoseconds.
static uint64_t rnr_timer_ns(uint8_t code) {
    static const uint32_t us[32] = {655360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920,
                                    2560, 3840, 5120, 7680, 10240, 15360, 20480, 30720, 40960, 61440, 81920, 122880,
                                    163840, 245760, 327680, 491520};
    return (uint64_t)us[code & 31] * 1000u;
}

// A request at the head of the held ones waits for a receive: with a finite RNR retry count
// (sent in its flags) the requester gives up after that many of the responder's RNR timers.
static void arm_rnr(struct wb_qp *qp) {
    qp->rnr_deadline = 0;
    if (!qp->held || !(qp->held->hdr.flags & WB_FLAG_RNR_FINITE)) return;
    uint64_t tries = (uint64_t)(qp->held->hdr.flags & WB_FLAG_RNR_RETRY) + 1;
    qp->rnr_deadline = now_ns() + tries * rnr_timer_ns(qp->attr.min_rnr_timer);
    wake_progress();
}

static void run_held(struct wb_qp *qp) {
    int ran = 0;
    while (qp->held) {
        struct wb_held *h = qp->held;
        if (!execute(qp, &h->hdr, h->data)) break;
        qp->held = h->next;
        qp->held_count--;
        if (!qp->held) qp->held_tail = NULL;
        free(h->data);
        free(h);
        ran = 1;
    }
    if (ran || !qp->held) arm_rnr(qp);
}

// The RNR retries of the held request ran out: the requester's QP ends in error with
// IBV_WC_RNR_RETRY_EXC_ERR, and what it had sent behind that request is dropped here (it
// flushes it) until it connects again.
static void rnr_expired(struct wb_qp *qp) {
    respond(qp, WB_ACK, IBV_WC_RNR_RETRY_EXC_ERR, 0, NULL, 0);
    conn_flush(&qp->in);
    while (qp->held) { struct wb_held *h = qp->held; qp->held = h->next; free(h->data); free(h); }
    qp->held_tail = NULL;
    qp->held_count = 0;
    qp->rnr_deadline = 0;
    qp->in_broken = 1;
}

static void hold(struct wb_qp *qp, const struct wb_hdr *h, uint8_t *data) {
    int first = qp->held == NULL;
    struct wb_held *e = calloc(1, sizeof *e);
    if (!e) { free(data); return; }
    e->hdr = *h;
    e->data = data;
    if (qp->held_tail) qp->held_tail->next = e; else qp->held = e;
    qp->held_tail = e;
    qp->held_count++;
    if (first) arm_rnr(qp);
}

static int wants_receive(const struct wb_hdr *h) {
    return h->op == WB_SEND || h->op == WB_SEND_IMM || h->op == WB_WRITE_IMM;
}

// Reads `len` bytes of a request's payload, and with them whatever of the next request's header
// has come: one system call per request while the stream is busy.
static int conn_read(struct wb_conn *c, void *buf, size_t len) {
    uint8_t *p = buf;
    while (len > 0) {
        struct iovec iov[2] = {{p, len}, {(uint8_t *)&c->next + c->next_have, sizeof(struct wb_hdr) - c->next_have}};
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = c->next_have < sizeof(struct wb_hdr) ? 2 : 1};
        ssize_t n = recvmsg(c->fd, &m, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        if ((size_t)n <= len) { p += n; len -= (size_t)n; }
        else { c->next_have += (uint32_t)((size_t)n - len); len = 0; }
    }
    return 0;
}

static int conn_header(struct wb_conn *c, struct wb_hdr *h) {
    if (c->next_have < sizeof *h && read_all(c->fd, (uint8_t *)&c->next + c->next_have, sizeof *h - c->next_have) < 0) return -1;
    *h = c->next;
    c->next_have = 0;
    return 0;
}

static void conn_discard(struct wb_conn *c, size_t len) {
    uint8_t scratch[4096];
    while (len > 0) {
        size_t n = len < sizeof scratch ? len : sizeof scratch;
        if (conn_read(c, scratch, n) < 0) return;
        len -= n;
    }
}

// A payload the requester left in its own memory (WB_FLAG_PULL): read from its process.
static int pull(const struct wb_qp *qp, const struct wb_hdr *h, uint64_t offset, void *dst, size_t len) {
    // Only from the process verified to hold the other end of this connection: a peer cannot
    // make this one read (or, for READ, write) any other process's memory.
    if (!qp->in_pid || (pid_t)h->b != qp->in_pid) return -1;
    uint8_t *d = dst;
    uint64_t src = h->a + offset;
    while (len > 0) {
        struct iovec l = {d, len}, r = {(void *)(uintptr_t)src, len};
        ssize_t n = process_vm_readv((pid_t)h->b, &l, 1, &r, 1, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        d += n;
        src += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

// A request's payload, from the stream or (pulled) from the requester's memory.
static int payload_into(struct wb_qp *qp, const struct wb_hdr *h, uint64_t offset, void *dst, size_t len) {
    return (h->flags & WB_FLAG_PULL) ? pull(qp, h, offset, dst, len) : conn_read(&qp->in, dst, len);
}

// A request arrived on qp's inbound connection: read its payload straight into place when it
// can run now, else keep it. Called with dev.lock held; reads block only for bytes in flight.
static int take_request(struct wb_qp *qp) {
    struct wb_hdr h;
    if (conn_header(&qp->in, &h) < 0) return -1;
    uint32_t payload = (h.op == WB_READ || h.op == WB_CAS || h.op == WB_FADD) ? 0 : h.len;
    uint32_t in_stream = (h.flags & WB_FLAG_PULL) ? 0 : payload;
    if (qp->in_broken) { conn_discard(&qp->in, in_stream); return 0; }
    if (qp->held || (wants_receive(&h) && qp_rq(qp)->count == 0) || qp->attr.qp_state == IBV_QPS_ERR) {
        uint8_t *data = payload ? malloc(payload) : NULL;
        if (payload && (!data || payload_into(qp, &h, 0, data, payload) < 0)) { free(data); return -1; }
        if (qp->attr.qp_state == IBV_QPS_ERR) { free(data); return 0; }
        h.flags &= (uint8_t)~WB_FLAG_PULL; // the payload is in `data` now
        hold(qp, &h, data);
        return 0;
    }
    if ((h.op == WB_WRITE || h.op == WB_WRITE_IMM) && payload) {
        uint8_t *dst = mr_translate(h.rkey, 1, h.addr, h.len, IBV_ACCESS_REMOTE_WRITE);
        if (dst) {
            if (payload_into(qp, &h, 0, dst, payload) < 0) return -1;
            // The data is in place; what is left is the receive (with immediate) and the ACK.
            struct wb_recv r;
            if (h.op == WB_WRITE_IMM && rq_pop(qp_rq(qp), &r))
                complete(qp, 1, r.wr_id, IBV_WC_SUCCESS, IBV_WC_RECV_RDMA_WITH_IMM, h.len, h.imm, IBV_WC_WITH_IMM, 0, 0);
            respond(qp, WB_ACK, 0, 0, NULL, 0);
            return 0;
        }
    }
    if ((h.op == WB_SEND || h.op == WB_SEND_IMM) && payload) {
        struct wb_recv r;
        if (!rq_pop(qp_rq(qp), &r)) return -1;
        int bad = 0;
        uint32_t off = 0;
        for (int i = 0; i < r.num_sge && off < payload; i++) {
            uint32_t n = r.sge[i].length < payload - off ? r.sge[i].length : payload - off;
            uint8_t *dst = mr_translate(r.sge[i].lkey, 0, r.sge[i].addr, n, 0);
            if (!dst) { bad = 1; break; }
            if (payload_into(qp, &h, off, dst, n) < 0) return -1;
            off += n;
        }
        if (off < payload) { bad = 1; if (in_stream) conn_discard(&qp->in, payload - off); }
        complete(qp, 1, r.wr_id, bad ? IBV_WC_LOC_LEN_ERR : IBV_WC_SUCCESS, IBV_WC_RECV, h.len, h.imm,
                 h.op == WB_SEND_IMM ? IBV_WC_WITH_IMM : 0, 0, 0);
        respond(qp, WB_ACK, bad ? IBV_WC_REM_INV_REQ_ERR : 0, 0, NULL, 0);
        return 0;
    }
    uint8_t *data = payload ? malloc(payload) : NULL;
    if (payload && (!data || payload_into(qp, &h, 0, data, payload) < 0)) { free(data); return -1; }
    execute(qp, &h, data);
    free(data);
    return 0;
}

// ---- requester: answers from the peer ------------------------------------------------

static void flush_qp(struct wb_qp *qp, enum ibv_wc_status first) {
    while (qp->out_count > 0) {
        struct wb_out *o = &qp->outq[qp->out_head];
        if (o->signaled || first != IBV_WC_SUCCESS)
            complete(qp, 0, o->wr_id, first, o->opcode, 0, 0, 0, 0, 0);
        first = IBV_WC_WR_FLUSH_ERR;
        qp->out_head = (qp->out_head + 1) % qp->out_cap;
        qp->out_count--;
    }
    struct wb_recv r;
    if (!qp->qp.srq)
        while (rq_pop(&qp->rq, &r)) complete(qp, 1, r.wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0, 0, 0, 0, 0);
}

static void to_error(struct wb_qp *qp, enum ibv_wc_status status) {
    qp->retry_deadline = 0;
    qp->attr.qp_state = IBV_QPS_ERR;
    qp->qp.state = IBV_QPS_ERR;
    flush_qp(qp, status);
    qp_sync(qp);
}

// The peer's LID: the address vector's, or the last bytes of its GID.
static uint16_t peer_lid(const struct ibv_ah_attr *ah) {
    if (ah->dlid) return ah->dlid;
    if (ah->is_global) return (uint16_t)(ah->grh.dgid.raw[14] << 8 | ah->grh.dgid.raw[15]);
    return 0;
}

// The requester's transport retries: a request the peer does not answer is sent again after
// the local ACK timeout (4.096 us x 2^timeout), retry_cnt times, before it fails. 0 when the
// QP's timeout is 0 (infinite: it never fails).
static uint64_t retry_ns(const struct wb_qp *qp) {
    if (qp->attr.timeout == 0) return 0;
    uint64_t ack_timeout = 4096ull << (qp->attr.timeout & 31);
    return ack_timeout * ((uint64_t)(qp->attr.retry_cnt & 7) + 1);
}

// The peer's device is gone (its connection ended, or a request could not be written): the
// requests it did not answer fail when the retries would have run out on a fabric, not at
// once, so that an application which stops needing them by then (a peer that finished and
// closed while this side's last sends were in flight) never sees the failure.
static void peer_lost(struct wb_qp *qp) {
    if (qp->out_count == 0 || qp->attr.qp_state == IBV_QPS_ERR || qp->retry_deadline) return;
    uint64_t ns = retry_ns(qp);
    if (!ns) return;
    qp->retry_deadline = now_ns() + ns;
    wake_progress();
}

static int take_response(struct wb_qp *qp) {
    struct wb_hdr h;
    if (read_all(qp->out_fd, &h, sizeof h) < 0) return -1;
    if (qp->out_count == 0) { discard(qp->out_fd, h.len); return 0; }
    struct wb_out *o = &qp->outq[qp->out_head];
    if (h.op == WB_READ_RESP && h.len) {
        uint32_t off = 0;
        for (int i = 0; i < o->num_sge && off < h.len; i++) {
            uint32_t n = o->sge[i].length < h.len - off ? o->sge[i].length : h.len - off;
            uint8_t *dst = mr_translate(o->sge[i].lkey, 0, o->sge[i].addr, n, IBV_ACCESS_LOCAL_WRITE);
            if (!dst) { discard(qp->out_fd, h.len - off); h.status = IBV_WC_LOC_PROT_ERR; off = h.len; break; }
            if (read_all(qp->out_fd, dst, n) < 0) return -1;
            off += n;
        }
        if (off < h.len) discard(qp->out_fd, h.len - off);
    } else if (h.len) {
        discard(qp->out_fd, h.len);
    }
    if (h.op == WB_ATOMIC_RESP && h.status == 0 && o->num_sge > 0) {
        uint8_t *dst = mr_translate(o->sge[0].lkey, 0, o->sge[0].addr, 8, IBV_ACCESS_LOCAL_WRITE);
        if (dst) memcpy(dst, &h.a, 8); else h.status = IBV_WC_LOC_PROT_ERR;
    }
    if (h.status != 0) { to_error(qp, (enum ibv_wc_status)h.status); return 0; }
    // An ACK answers h.a requests, oldest first.
    uint64_t answered = h.op == WB_ACK && h.a > 1 ? h.a : 1;
    for (uint64_t k = 0; k < answered && qp->out_count > 0; k++) {
        o = &qp->outq[qp->out_head];
        if (o->signaled) complete(qp, 0, o->wr_id, IBV_WC_SUCCESS, o->opcode, o->len, 0, 0, 0, 0);
        qp->out_head = (qp->out_head + 1) % qp->out_cap;
        qp->out_count--;
    }
    return 0;
}

// ---- unreliable datagrams ------------------------------------------------------------

static void deliver_datagram(const struct wb_hdr *hp, const uint8_t *payload) {
    struct wb_hdr h = *hp;
    struct wb_qp *qp = find_qp((uint32_t)h.addr);
    if (!qp || qp->qp.qp_type != IBV_QPT_UD || qp->attr.qp_state < IBV_QPS_RTR || qp->attr.qp_state == IBV_QPS_ERR) return;
    if (h.rkey != qp->attr.qkey && !(h.rkey & 0x80000000u)) return;
    struct wb_recv r;
    if (!rq_pop(qp_rq(qp), &r)) return; // no receive posted: the datagram is dropped, as on a fabric
    // A UD receive starts with the 40-byte GRH space.
    uint8_t grh[40] = {0};
    grh[0] = 0x60;
    int bad = scatter(&r, 0, grh, 40) < 0 || scatter(&r, 40, payload, h.len) < 0;
    complete(qp, 1, r.wr_id, bad ? IBV_WC_LOC_LEN_ERR : IBV_WC_SUCCESS, IBV_WC_RECV, h.len + 40, h.imm,
             (h.op == WB_SEND_IMM ? IBV_WC_WITH_IMM : 0), (uint32_t)h.b, (uint16_t)h.a);
    qp_sync(qp);
}

static void take_datagram(void) {
    static uint8_t buf[65536];
    ssize_t n = recv(dev.udp_fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < (ssize_t)sizeof(struct wb_hdr)) return;
    struct wb_hdr h;
    memcpy(&h, buf, sizeof h);
    if (h.len > (uint64_t)n - sizeof h) return;
    deliver_datagram(&h, buf + sizeof h);
}

// A datagram from a device's UD connection; -1 when the connection ended.
static int take_ud(int fd) {
    static uint8_t buf[4096];
    struct wb_hdr h;
    if (read_all(fd, &h, sizeof h) < 0 || h.len > sizeof buf || read_all(fd, buf, h.len) < 0) return -1;
    deliver_datagram(&h, buf);
    return 0;
}

struct wb_where {
    uint16_t tcp_port, udp_port;
    pid_t pid;
    char host[80];
    uint64_t state;
    int count;
    struct in_addr addr[8];
};

static int lookup(uint16_t lid, struct wb_where *w);
static const char *host_identity(void);

static int connect_to(const struct wb_where *w, uint32_t src_qpn, uint32_t dst_qpn);

// The connection for datagrams to the device with `lid` (made on first use); -1 if unreachable.
static int ud_path(uint16_t lid, uint32_t src_qpn) {
    for (int i = 0; i < dev.ud_out_count; i++)
        if (dev.ud_out[i].lid == lid && dev.ud_out[i].fd >= 0) return dev.ud_out[i].fd;
    if (dev.ud_out_count == (int)(sizeof dev.ud_out / sizeof dev.ud_out[0])) return -1;
    struct wb_where w;
    int fd = lookup(lid, &w) == 0 ? connect_to(&w, src_qpn, WB_UD_CHANNEL) : -1;
    if (fd < 0) return -1;
    dev.ud_out[dev.ud_out_count].lid = lid;
    dev.ud_out[dev.ud_out_count].fd = fd;
    dev.ud_out_count++;
    return fd;
}

// ---- the progress thread -------------------------------------------------------------


// The process that holds the other end of the TCP connection `fd`, when the fabric says the
// connecting device (`lid`) is a process of this host and that process's own TCP table and
// fds show it holds that end; else 0. (Its netns may differ: /proc/PID/net/tcp is its own.)
static pid_t connection_owner(int fd, uint16_t lid) {
    struct wb_where w;
    if (lookup(lid, &w) < 0 || !w.pid || strcmp(w.host, host_identity())) return 0;
    struct sockaddr_in peer, me;
    socklen_t pl = sizeof peer, ml = sizeof me;
    if (getpeername(fd, (struct sockaddr *)&peer, &pl) || getsockname(fd, (struct sockaddr *)&me, &ml) || peer.sin_family != AF_INET) return 0;
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/net/tcp", w.pid);
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    unsigned long inode = 0;
    while (!inode && fgets(line, sizeof line, f)) {
        unsigned int la, lp, ra, rp;
        unsigned long ino;
        if (sscanf(line, " %*d: %8X:%4X %8X:%4X %*X %*X:%*X %*X:%*X %*X %*u %*u %lu", &la, &lp, &ra, &rp, &ino) != 5) continue;
        if (la == peer.sin_addr.s_addr && lp == ntohs(peer.sin_port) && ra == me.sin_addr.s_addr && rp == ntohs(me.sin_port)) inode = ino;
    }
    fclose(f);
    if (!inode) return 0;
    char want[64], link[64];
    snprintf(want, sizeof want, "socket:[%lu]", inode);
    snprintf(path, sizeof path, "/proc/%d/fd", w.pid);
    DIR *d = opendir(path);
    if (!d) return 0;
    pid_t owner = 0;
    for (struct dirent *e; !owner && (e = readdir(d));) {
        char p[300];
        snprintf(p, sizeof p, "/proc/%d/fd/%s", w.pid, e->d_name);
        ssize_t n = readlink(p, link, sizeof link - 1);
        if (n > 0) { link[n] = 0; if (!strcmp(link, want)) owner = w.pid; }
    }
    closedir(d);
    return owner;
}

static void accept_connection(void) {
    int fd = accept4(dev.listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct wb_hello hello;
    if (read_all(fd, &hello, sizeof hello) < 0 || hello.magic != WB_HELLO_MAGIC) { close(fd); return; }
    if (hello.dst_qpn == WB_UD_CHANNEL) {
        if (dev.ud_in_count == (int)(sizeof dev.ud_in / sizeof dev.ud_in[0])) { close(fd); return; }
        dev.ud_in[dev.ud_in_count++] = fd;
        return;
    }
    struct wb_qp *qp = find_qp(hello.dst_qpn);
    if (!qp || (qp->qp.qp_type != IBV_QPT_RC && qp->qp.qp_type != IBV_QPT_UC)) { close(fd); return; }
    if (qp->in.fd >= 0) close(qp->in.fd);
    qp->in_pid = connection_owner(fd, hello.src_lid);
    qp->in.fd = fd;
    qp->in.outlen = 0;
    qp->in.ack_at = SIZE_MAX;
    qp->in.next_have = 0;
    qp->in_broken = 0;
}

static void *progress(void *unused) {
    (void)unused;
    struct pollfd *fds = NULL;
    struct wb_qp **owners = NULL;
    int *kinds = NULL;
    size_t cap = 0;
    for (;;) {
        pthread_mutex_lock(&dev.lock);
        size_t n = 0, want = 3 + (size_t)dev.ud_in_count;
        for (struct wb_qp *q = dev.qps; q; q = q->next) want += 2;
        if (want > cap) {
            cap = want * 2;
            fds = realloc(fds, sizeof *fds * cap);
            owners = realloc(owners, sizeof *owners * cap);
            kinds = realloc(kinds, sizeof *kinds * cap);
        }
        fds[n] = (struct pollfd){.fd = dev.wake[0], .events = POLLIN}; owners[n] = NULL; kinds[n++] = 0;
        fds[n] = (struct pollfd){.fd = dev.listen_fd, .events = POLLIN}; owners[n] = NULL; kinds[n++] = 1;
        fds[n] = (struct pollfd){.fd = dev.udp_fd, .events = POLLIN}; owners[n] = NULL; kinds[n++] = 2;
        for (int u = 0; u < dev.ud_in_count; u++) { fds[n] = (struct pollfd){.fd = dev.ud_in[u], .events = POLLIN}; owners[n] = NULL; kinds[n++] = 5; }
        // The QPs' connections, and the first RNR deadline of a held request, if one has one.
        int timeout = -1;
        uint64_t t = 0;
        for (struct wb_qp *q = dev.qps; q; q = q->next) {
            if (q->in.fd >= 0) {
                fds[n] = (struct pollfd){.fd = q->in.fd, .events = POLLIN | (q->in.outlen ? POLLOUT : 0)};
                owners[n] = q; kinds[n++] = 3;
            }
            if (q->out_fd >= 0 && q->qp.qp_type == IBV_QPT_RC) {
                fds[n] = (struct pollfd){.fd = q->out_fd, .events = POLLIN}; owners[n] = q; kinds[n++] = 4;
            }
            uint64_t deadlines[2] = {q->rnr_deadline, q->retry_deadline};
            for (int k = 0; k < 2; k++) {
                if (!deadlines[k]) continue;
                if (!t) t = now_ns();
                uint64_t left = deadlines[k] <= t ? 0 : (deadlines[k] - t + 999999) / 1000000;
                int ms = left > INT32_MAX ? INT32_MAX : (int)left;
                if (timeout < 0 || ms < timeout) timeout = ms;
            }
        }
        pthread_mutex_unlock(&dev.lock);
        int r = poll(fds, (nfds_t)n, timeout);
        if (r < 0 && timeout < 0) continue;
        pthread_mutex_lock(&dev.lock);
        if (timeout >= 0) {
            t = now_ns();
            for (struct wb_qp *q = dev.qps; q; q = q->next) {
                if (q->rnr_deadline && q->rnr_deadline <= t) { rnr_expired(q); qp_sync(q); }
                if (q->retry_deadline && q->retry_deadline <= t) {
                    // The application sees only the status: say where it came from.
                    fprintf(stderr, "wbsoft0: QP %u: the peer (LID %u QP %u) is gone with %u request(s) unanswered; "
                            "they fail with IBV_WC_RETRY_EXC_ERR after the QP's retries\n",
                            q->qp.qp_num, peer_lid(&q->attr.ah_attr), q->attr.dest_qp_num, q->out_count);
                    to_error(q, IBV_WC_RETRY_EXC_ERR);
                }
            }
        }
        if (r < 0) { pthread_mutex_unlock(&dev.lock); continue; }
        for (size_t i = 0; i < n; i++) {
            if (!fds[i].revents) continue;
            struct wb_qp *q = owners[i];
            // The QP may have been destroyed while we polled.
            if (q) {
                int alive = 0;
                for (struct wb_qp *x = dev.qps; x; x = x->next) if (x == q) alive = 1;
                if (!alive) continue;
            }
            struct wb_qp *qp_sync_later = NULL;
            switch (kinds[i]) {
            case 0: { char b[64]; ssize_t rr = read(dev.wake[0], b, sizeof b); (void)rr; break; }
            case 1: accept_connection(); break;
            case 2: take_datagram(); break;
            case 5:
                for (int u = 0; u < dev.ud_in_count; u++) {
                    if (dev.ud_in[u] != fds[i].fd) continue;
                    if (take_ud(fds[i].fd) < 0) { close(fds[i].fd); dev.ud_in[u] = dev.ud_in[--dev.ud_in_count]; }
                    break;
                }
                break;
            case 3:
                if (q->in.fd != fds[i].fd) break;
                qp_sync_later = q;
                if (fds[i].revents & POLLOUT) conn_flush(&q->in);
                if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                    // Take every request already here before polling again.
                    do {
                        if (take_request(q) < 0) { close(q->in.fd); q->in.fd = -1; break; }
                        // The next request's header came along (or part of it, the rest in flight).
                        if (q->in.next_have > 0) continue;
                        int avail = 0;
                        if (ioctl_fionread(q->in.fd, &avail) < 0 || avail < (int)sizeof(struct wb_hdr)) break;
                    } while (1);
                    if (q->in.fd >= 0) conn_flush(&q->in);
                }
                break;
            case 4:
                if (q->out_fd != fds[i].fd) break;
                qp_sync_later = q;
                do {
                    if (take_response(q) < 0) {
                        // The peer is gone. Requests it did not answer fail when the retries
                        // run out; with none outstanding the QP stays as it is (its receives
                        // stay posted) until a send finds no peer.
                        close(q->out_fd); q->out_fd = -1;
                        peer_lost(q);
                        break;
                    }
                    int avail = 0;
                    if (ioctl_fionread(q->out_fd, &avail) < 0 || avail < (int)sizeof(struct wb_hdr)) break;
                } while (1);
                break;
            }
            if (qp_sync_later) { qp_sync(qp_sync_later); qp_sync_later = NULL; }
        }
        pthread_mutex_unlock(&dev.lock);
    }
    return NULL;
}

// ---- the device and the fabric directory ---------------------------------------------

// The fabric directory: WB_IB_FABRIC, or the default `wb run --ib` also sets.
static const char *fabric_path(void) {
    const char *d = getenv("WB_IB_FABRIC");
    return d && *d ? d : "/tmp/wbsoft-fabric";
}

static int fabric_dir(void) {
    snprintf(dev.fabric, sizeof dev.fabric, "%s", fabric_path());
    if (mkdir(dev.fabric, 01777) < 0 && errno != EEXIST) return -1;
    return 0;
}

// This host and pid namespace: the kernel's boot id and the namespace's inode. Devices that
// share it can move RDMA data between their processes' memory directly.
static const char *host_identity(void) {
    static char id[80];
    if (!id[0]) {
        char boot[40] = "";
        FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
        if (f) { if (!fgets(boot, sizeof boot, f)) boot[0] = 0; fclose(f); }
        boot[strcspn(boot, "\n")] = 0;
        struct stat st;
        unsigned long long ns = stat("/proc/self/ns/pid", &st) == 0 ? (unsigned long long)st.st_ino : 0;
        snprintf(id, sizeof id, "%s:%llu", boot[0] ? boot : "none", ns);
    }
    return id;
}

// Publish this device: a LID no other device holds, with the ports and addresses it listens on.
static int publish(void) {
    char addrs[1024] = "";
    size_t used = 0;
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) == 0) {
        for (int pass = 0; pass < 2; pass++)
            for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
                if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP)) continue;
                int loop = (i->ifa_flags & IFF_LOOPBACK) != 0;
                if (loop != pass) continue;
                char a[INET_ADDRSTRLEN];
                inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, a, sizeof a);
                used += (size_t)snprintf(addrs + used, sizeof addrs - used, " %s", a);
                if (used >= sizeof addrs) { used = sizeof addrs - 1; break; }
            }
        freeifaddrs(ifs);
    }
    char line[1200];
    int len = snprintf(line, sizeof line, "%u %u pid=%d host=%s state=%llx%s\n", dev.tcp_port, dev.udp_port, getpid(),
                       host_identity(), (unsigned long long)(uintptr_t)&area, addrs);
    uint16_t start = (uint16_t)(1 + (getpid() % 0xbffe));
    for (uint32_t k = 0; k < 0xbffe; k++) {
        uint16_t lid = (uint16_t)(1 + (start - 1 + k) % 0xbffe);
        char path[300];
        snprintf(path, sizeof path, "%s/lid-%u", dev.fabric, lid);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0) { if (errno == EEXIST) continue; return -1; }
        ssize_t w = write(fd, line, (size_t)len);
        close(fd);
        if (w != len) { unlink(path); return -1; }
        dev.lid = lid;
        return 0;
    }
    errno = ENOSPC;
    return -1;
}


static int lookup(uint16_t lid, struct wb_where *w) {
    char path[300], line[1200];
    snprintf(path, sizeof path, "%s/lid-%u", dev.fabric, lid);
    FILE *f = fopen(path, "re");
    if (!f) return -1;
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    if (!got) return -1;
    memset(w, 0, sizeof *w);
    char *save = NULL;
    char *tok = strtok_r(line, " \n", &save);
    if (!tok) return -1;
    w->tcp_port = (uint16_t)atoi(tok);
    tok = strtok_r(NULL, " \n", &save);
    if (!tok) return -1;
    w->udp_port = (uint16_t)atoi(tok);
    while ((tok = strtok_r(NULL, " \n", &save)) && w->count < 8) {
        if (!strncmp(tok, "pid=", 4)) w->pid = (pid_t)atoi(tok + 4);
        else if (!strncmp(tok, "host=", 5)) snprintf(w->host, sizeof w->host, "%s", tok + 5);
        else if (!strncmp(tok, "state=", 6)) w->state = strtoull(tok + 6, NULL, 16);
        else if (inet_pton(AF_INET, tok, &w->addr[w->count]) == 1) w->count++;
    }
    return w->count > 0 ? 0 : -1;
}

// Whether the device with `lid` is a process of this host and pid namespace whose memory this
// process can read (and so, with the same credentials, it ours): then RC payloads of
// PULL_MIN bytes or more go by its reading them from here (one copy) instead of over TCP.
#define PULL_MIN 8192
static int same_host(const struct wb_where *w) {
    const char *off = getenv("WB_IB_NO_SHM");
    if (off && *off && strcmp(off, "0")) return 0;
    if (!w->pid || !w->state || strcmp(w->host, host_identity())) return 0;
    char magic[8];
    struct iovec l = {magic, 8}, r = {(void *)(uintptr_t)w->state, 8};
    return process_vm_readv(w->pid, &l, 1, &r, 1, 0) == 8 && !memcmp(magic, WB_STATE_MAGIC, 8);
}

// A connection to the device `w` describes, having said which QP it is for; -1 if unreachable.
static int connect_to(const struct wb_where *w, uint32_t src_qpn, uint32_t dst_qpn) {
    for (int i = 0; i < w->count; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(w->tcp_port), .sin_addr = w->addr[i]};
        struct timeval tv = {.tv_sec = 2};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
            struct timeval none = {0};
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none);
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            struct wb_hello h = {.magic = WB_HELLO_MAGIC, .src_lid = dev.lid, .src_qpn = src_qpn, .dst_qpn = dst_qpn};
            if (write_all(fd, &h, sizeof h) == 0) return fd;
        }
        close(fd);
    }
    return -1;
}

static int device_start(void) {
    if (dev.started) return 0;
    if (fabric_dir() < 0) return -1;
    dev.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    dev.udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (dev.listen_fd < 0 || dev.udp_fd < 0) return -1;
    struct sockaddr_in any = {.sin_family = AF_INET};
    socklen_t sl = sizeof any;
    if (bind(dev.listen_fd, (struct sockaddr *)&any, sizeof any) < 0 || listen(dev.listen_fd, 128) < 0) return -1;
    getsockname(dev.listen_fd, (struct sockaddr *)&any, &sl);
    dev.tcp_port = ntohs(any.sin_port);
    struct sockaddr_in uany = {.sin_family = AF_INET};
    int big = 4 << 20;
    setsockopt(dev.udp_fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    if (bind(dev.udp_fd, (struct sockaddr *)&uany, sizeof uany) < 0) return -1;
    sl = sizeof uany;
    getsockname(dev.udp_fd, (struct sockaddr *)&uany, &sl);
    dev.udp_port = ntohs(uany.sin_port);
    if (pipe2(dev.wake, O_CLOEXEC | O_NONBLOCK) < 0) return -1;
    if (publish() < 0) return -1;
    state_open();
    if (state) {
        state->lid = dev.lid;
        state->tcp_port = dev.tcp_port;
        state->udp_port = dev.udp_port;
        snprintf(state->fabric, sizeof state->fabric, "%s", dev.fabric);
    }
    dev.next_qpn = 0x11;
    dev.next_key = 0x100;
    if (pthread_create(&dev.thread, NULL, progress, NULL) != 0) return -1;
    pthread_setname_np(dev.thread, "wbsoft0");
    dev.started = 1;
    return 0;
}

// ---- data path (the context's ops) ---------------------------------------------------

static int wb_post_recv(struct ibv_qp *ibqp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad) {
    struct wb_qp *qp = (struct wb_qp *)ibqp;
    if (qp->qp.srq) { *bad = wr; return EINVAL; }
    pthread_mutex_lock(&dev.lock);
    int err = 0;
    for (; wr; wr = wr->next) {
        if (qp->attr.qp_state == IBV_QPS_RESET || (uint32_t)wr->num_sge > qp->init.cap.max_recv_sge) { err = EINVAL; break; }
        if ((err = rq_push(&qp->rq, wr))) break;
    }
    if (err) *bad = wr;
    if (qp->attr.qp_state == IBV_QPS_ERR) flush_qp(qp, IBV_WC_WR_FLUSH_ERR);
    else run_held(qp);
    qp_sync(qp);
    pthread_mutex_unlock(&dev.lock);
    return err;
}

static int wb_post_srq_recv(struct ibv_srq *ibsrq, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad) {
    struct wb_srq *srq = (struct wb_srq *)ibsrq;
    pthread_mutex_lock(&dev.lock);
    int err = 0;
    for (; wr; wr = wr->next)
        if ((err = rq_push(&srq->rq, wr))) break;
    if (err) *bad = wr;
    for (struct wb_qp *q = dev.qps; q; q = q->next)
        if (q->qp.srq == ibsrq) { run_held(q); qp_sync(q); }
    if (srq->rec) srq->rec->recvs = srq->rq.count;
    pthread_mutex_unlock(&dev.lock);
    return err;
}

static enum ibv_wc_opcode wc_opcode(enum ibv_wr_opcode op) {
    switch (op) {
    case IBV_WR_RDMA_WRITE: case IBV_WR_RDMA_WRITE_WITH_IMM: return IBV_WC_RDMA_WRITE;
    case IBV_WR_RDMA_READ: return IBV_WC_RDMA_READ;
    case IBV_WR_ATOMIC_CMP_AND_SWP: return IBV_WC_COMP_SWAP;
    case IBV_WR_ATOMIC_FETCH_AND_ADD: return IBV_WC_FETCH_ADD;
    default: return IBV_WC_SEND;
    }
}

static int wire_op(enum ibv_wr_opcode op) {
    switch (op) {
    case IBV_WR_SEND: return WB_SEND;
    case IBV_WR_SEND_WITH_IMM: return WB_SEND_IMM;
    case IBV_WR_RDMA_WRITE: return WB_WRITE;
    case IBV_WR_RDMA_WRITE_WITH_IMM: return WB_WRITE_IMM;
    case IBV_WR_RDMA_READ: return WB_READ;
    case IBV_WR_ATOMIC_CMP_AND_SWP: return WB_CAS;
    case IBV_WR_ATOMIC_FETCH_AND_ADD: return WB_FADD;
    default: return -1;
    }
}

static int post_ud(struct wb_qp *qp, struct ibv_send_wr *wr) {
    if (wr->opcode != IBV_WR_SEND && wr->opcode != IBV_WR_SEND_WITH_IMM) return EINVAL;
    struct wb_ah *ah = (struct wb_ah *)wr->wr.ud.ah;
    if (!ah) return EINVAL;
    uint16_t lid = ah->attr.dlid;
    if (!lid && ah->attr.is_global) lid = (uint16_t)(ah->attr.grh.dgid.raw[14] << 8 | ah->attr.grh.dgid.raw[15]);
    uint64_t total = sge_total(wr->sg_list, wr->num_sge);
    if (total > 4096) return EINVAL;
    uint8_t buf[sizeof(struct wb_hdr) + 4096];
    struct wb_hdr h = {.op = (uint8_t)wire_op(wr->opcode), .imm = wr->imm_data, .addr = wr->wr.ud.remote_qpn,
                       .rkey = wr->wr.ud.remote_qkey, .len = (uint32_t)total, .a = dev.lid, .b = qp->qp.qp_num};
    memcpy(buf, &h, sizeof h);
    uint32_t off = sizeof h;
    for (int i = 0; i < wr->num_sge; i++) {
        const void *src = (wr->send_flags & IBV_SEND_INLINE) ? (void *)(uintptr_t)wr->sg_list[i].addr
                              : mr_translate(wr->sg_list[i].lkey, 0, wr->sg_list[i].addr, wr->sg_list[i].length, 0);
        if (!src) return EINVAL;
        memcpy(buf + off, src, wr->sg_list[i].length);
        off += wr->sg_list[i].length;
    }
    // Over the connection to that device; one that cannot be reached drops it, as a fabric would.
    pthread_mutex_lock(&dev.ud_lock);
    int fd = ud_path(lid, qp->qp.qp_num);
    if (fd >= 0 && write_all(fd, buf, off) < 0) {
        for (int i = 0; i < dev.ud_out_count; i++)
            if (dev.ud_out[i].fd == fd) { close(fd); dev.ud_out[i] = dev.ud_out[--dev.ud_out_count]; break; }
    }
    pthread_mutex_unlock(&dev.ud_lock);
    // A datagram is complete once it is on the wire, delivered or not.
    if (qp->sq_sig_all || (wr->send_flags & IBV_SEND_SIGNALED)) {
        pthread_mutex_lock(&dev.lock);
        complete(qp, 0, wr->wr_id, IBV_WC_SUCCESS, IBV_WC_SEND, (uint32_t)total, 0, 0, 0, 0);
        pthread_mutex_unlock(&dev.lock);
    }
    return 0;
}

static int wb_post_send(struct ibv_qp *ibqp, struct ibv_send_wr *wr, struct ibv_send_wr **bad) {
    struct wb_qp *qp = (struct wb_qp *)ibqp;
    int err = 0;
    pthread_mutex_lock(&qp->send_lock);
    for (; wr; wr = wr->next) {
        if (qp->attr.qp_state != IBV_QPS_RTS && qp->attr.qp_state != IBV_QPS_ERR) { err = EINVAL; break; }
        if (wr->num_sge < 0 || wr->num_sge > MAX_SGE) { err = EINVAL; break; }
        if (qp->qp.qp_type == IBV_QPT_UD) {
            if ((err = post_ud(qp, wr))) break;
            continue;
        }
        int op = wire_op(wr->opcode);
        if (op < 0 || (qp->qp.qp_type == IBV_QPT_UC && (op == WB_READ || op == WB_CAS || op == WB_FADD))) { err = EINVAL; break; }
        int inl = (wr->send_flags & IBV_SEND_INLINE) && op != WB_READ && op != WB_CAS && op != WB_FADD;
        uint64_t total = sge_total(wr->sg_list, wr->num_sge);
        if (inl && total > MAX_INLINE) { err = EINVAL; break; }
        int signaled = qp->sq_sig_all || (wr->send_flags & IBV_SEND_SIGNALED);
        struct wb_hdr h = {.op = (uint8_t)op, .imm = wr->imm_data, .len = (uint32_t)total};
        if (qp->qp.qp_type == IBV_QPT_RC && qp->attr.rnr_retry < 7) h.flags = WB_FLAG_RNR_FINITE | qp->attr.rnr_retry;
        // On one host, a large payload stays in this process's memory (which the application
        // leaves alone until the completion) and the responder reads it from here.
        int pulled = qp->pull && qp->qp.qp_type == IBV_QPT_RC && !inl && wr->num_sge == 1 && total >= PULL_MIN &&
                     (op == WB_SEND || op == WB_SEND_IMM || op == WB_WRITE || op == WB_WRITE_IMM || op == WB_READ);
        if (pulled) { h.flags |= WB_FLAG_PULL; h.a = wr->sg_list[0].addr; h.b = (uint64_t)getpid(); }
        if (op == WB_WRITE || op == WB_WRITE_IMM || op == WB_READ) { h.addr = wr->wr.rdma.remote_addr; h.rkey = wr->wr.rdma.rkey; }
        if (op == WB_CAS || op == WB_FADD) {
            h.addr = wr->wr.atomic.remote_addr; h.rkey = wr->wr.atomic.rkey;
            h.a = op == WB_CAS ? wr->wr.atomic.compare_add : wr->wr.atomic.compare_add;
            h.b = wr->wr.atomic.swap;
            h.len = 8;
        }
        pthread_mutex_lock(&dev.lock);
        int local_ok = inl || sges_valid(wr->sg_list, wr->num_sge, (op == WB_READ || op == WB_CAS || op == WB_FADD) ? IBV_ACCESS_LOCAL_WRITE : 0);
        if (qp->attr.qp_state == IBV_QPS_ERR || !local_ok) {
            // A QP in error flushes what is posted; a bad local buffer fails this request.
            if (qp->attr.qp_state != IBV_QPS_ERR) to_error(qp, IBV_WC_LOC_PROT_ERR);
            complete(qp, 0, wr->wr_id, IBV_WC_WR_FLUSH_ERR, wc_opcode(wr->opcode), 0, 0, 0, 0, 0);
            pthread_mutex_unlock(&dev.lock);
            continue;
        }
        // No peer to send to (its device is gone): an RC request waits, unanswered, for the
        // retries to run out (peer_lost); a UC send is done once sent, as on a fabric.
        int gone = qp->out_fd < 0;
        if (gone && qp->qp.qp_type == IBV_QPT_UC) {
            if (signaled) complete(qp, 0, wr->wr_id, IBV_WC_SUCCESS, wc_opcode(wr->opcode), (uint32_t)total, 0, 0, 0, 0);
            pthread_mutex_unlock(&dev.lock);
            continue;
        }
        if (qp->qp.qp_type == IBV_QPT_RC) {
            if (qp->out_count == qp->out_cap) {
                uint32_t cap = qp->out_cap ? qp->out_cap * 2 : 64;
                struct wb_out *q = malloc(sizeof *q * cap);
                if (!q) { pthread_mutex_unlock(&dev.lock); err = ENOMEM; break; }
                for (uint32_t i = 0; i < qp->out_count; i++) q[i] = qp->outq[(qp->out_head + i) % qp->out_cap];
                free(qp->outq);
                qp->outq = q; qp->out_cap = cap; qp->out_head = 0;
            }
            struct wb_out *o = &qp->outq[(qp->out_head + qp->out_count) % qp->out_cap];
            o->wr_id = wr->wr_id;
            o->opcode = wc_opcode(wr->opcode);
            o->signaled = signaled;
            o->len = (uint32_t)total;
            o->num_sge = wr->num_sge;
            memcpy(o->sge, wr->sg_list, sizeof(struct ibv_sge) * (size_t)wr->num_sge);
            qp->out_count++;
            qp_sync(qp);
            if (gone) { peer_lost(qp); pthread_mutex_unlock(&dev.lock); continue; }
        }
        // Gather the payload while the buffers are known good.
        struct iovec iov[MAX_SGE + 1];
        int cnt = 0;
        iov[cnt++] = (struct iovec){&h, sizeof h};
        if (op != WB_READ && op != WB_CAS && op != WB_FADD && !pulled)
            for (int i = 0; i < wr->num_sge; i++) {
                if (!wr->sg_list[i].length) continue;
                void *src = inl ? (void *)(uintptr_t)wr->sg_list[i].addr
                                : mr_translate(wr->sg_list[i].lkey, 0, wr->sg_list[i].addr, wr->sg_list[i].length, 0);
                iov[cnt++] = (struct iovec){src, wr->sg_list[i].length};
            }
        int fd = qp->out_fd;
        pthread_mutex_unlock(&dev.lock);
        if (writev_all(fd, iov, cnt) < 0) {
            // The peer's device is gone; the progress thread sees its connection end too.
            pthread_mutex_lock(&dev.lock);
            if (qp->qp.qp_type == IBV_QPT_RC) peer_lost(qp);
            else if (signaled) complete(qp, 0, wr->wr_id, IBV_WC_SUCCESS, wc_opcode(wr->opcode), (uint32_t)total, 0, 0, 0, 0);
            pthread_mutex_unlock(&dev.lock);
            continue;
        }
        if (qp->qp.qp_type == IBV_QPT_UC && signaled) {
            pthread_mutex_lock(&dev.lock);
            complete(qp, 0, wr->wr_id, IBV_WC_SUCCESS, wc_opcode(wr->opcode), (uint32_t)total, 0, 0, 0, 0);
            pthread_mutex_unlock(&dev.lock);
        }
    }
    pthread_mutex_unlock(&qp->send_lock);
    if (err) *bad = wr;
    return err;
}

static int wb_poll_cq(struct ibv_cq *ibcq, int n, struct ibv_wc *wc) {
    struct wb_cq *cq = (struct wb_cq *)ibcq;
    // Busy pollers must not keep the progress thread from the lock: look before locking.
    // An empty poll yields, so that on a busy host the device's thread gets to run.
    if (__atomic_load_n(&cq->count, __ATOMIC_ACQUIRE) == 0) { sched_yield(); return 0; }
    pthread_mutex_lock(&dev.lock);
    int got = 0;
    while (got < n && cq->count > 0) {
        wc[got++] = cq->ring[cq->head];
        cq->head = (cq->head + 1) % cq->cap;
        cq->count--;
    }
    if (cq->rec) cq->rec->completions = cq->count;
    pthread_mutex_unlock(&dev.lock);
    return got;
}

static int wb_req_notify_cq(struct ibv_cq *ibcq, int solicited_only) {
    (void)solicited_only;
    struct wb_cq *cq = (struct wb_cq *)ibcq;
    pthread_mutex_lock(&dev.lock);
    cq->armed = 1;
    pthread_mutex_unlock(&dev.lock);
    return 0;
}

// ---- control path: devices and contexts ----------------------------------------------

static void unsupported(const char *call);

static struct ibv_device *device_list[2] = {&wbsoft, NULL};

EXPORT struct ibv_device **ibv_get_device_list(int *num) {
    struct ibv_device **l = malloc(sizeof device_list);
    if (!l) { errno = ENOMEM; return NULL; }
    memcpy(l, device_list, sizeof device_list);
    if (num) *num = 1;
    return l;
}

EXPORT void ibv_free_device_list(struct ibv_device **list) { free(list); }

// Some programs look for the kernel's InfiniBand class in sysfs before they ask for devices
// (Open MPI's openib BTL). The layer's sysfs is a directory of the fabric that holds it.
EXPORT const char *ibv_get_sysfs_path(void) {
    static char path[300];
    if (!path[0]) {
        const char *dir = fabric_path();
        char p[400];
        const char *parts[] = {"", "/sysfs", "/sysfs/class", "/sysfs/class/infiniband", "/sysfs/class/infiniband/wbsoft0"};
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            snprintf(p, sizeof p, "%.300s%s", dir, parts[i]);
            mkdir(p, i == 0 ? 01777 : 0755);
        }
        snprintf(path, sizeof path, "%.280s/sysfs", dir);
    }
    return path;
}
EXPORT const char *ibv_get_device_name(struct ibv_device *device) { return device->name; }
EXPORT __be64 ibv_get_device_guid(struct ibv_device *device) { (void)device; return htobe64(node_guid); }
EXPORT int ibv_get_device_index(struct ibv_device *device) { (void)device; return 0; }
EXPORT int ibv_fork_init(void) { return 0; }
EXPORT enum ibv_fork_status ibv_is_fork_initialized(void) { return IBV_FORK_UNNEEDED; }

EXPORT struct ibv_context *ibv_open_device(struct ibv_device *device) {
    if (device != &wbsoft) { errno = ENODEV; return NULL; }
    pthread_mutex_lock(&dev.lock);
    int ok = device_start() == 0;
    pthread_mutex_unlock(&dev.lock);
    if (!ok) {
        fprintf(stderr, "wbsoft0: cannot start the emulated device (fabric directory %s): %s\n", dev.fabric, strerror(errno));
        return NULL;
    }
    struct wb_context *c = calloc(1, sizeof *c);
    if (!c) { errno = ENOMEM; return NULL; }
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) { free(c); return NULL; }
    c->context.device = device;
    c->context.ops.poll_cq = wb_poll_cq;
    c->context.ops.req_notify_cq = wb_req_notify_cq;
    c->context.ops.post_send = wb_post_send;
    c->context.ops.post_recv = wb_post_recv;
    c->context.ops.post_srq_recv = wb_post_srq_recv;
    c->context.cmd_fd = -1;
    c->context.async_fd = p[0];
    c->async_write_fd = p[1];
    c->context.num_comp_vectors = 1;
    pthread_mutex_init(&c->context.mutex, NULL);
    c->context.abi_compat = NULL; // no extended verbs: their inline wrappers report EOPNOTSUPP
    return &c->context;
}

EXPORT int ibv_close_device(struct ibv_context *context) {
    struct wb_context *c = (struct wb_context *)context;
    close(c->context.async_fd);
    close(c->async_write_fd);
    free(c);
    return 0;
}

EXPORT int ibv_query_device(struct ibv_context *context, struct ibv_device_attr *a) {
    (void)context;
    memset(a, 0, sizeof *a);
    snprintf(a->fw_ver, sizeof a->fw_ver, "wbsoft 1.0");
    a->node_guid = htobe64(node_guid);
    a->sys_image_guid = htobe64(node_guid);
    a->max_mr_size = UINT64_MAX;
    a->page_size_cap = 4096;
    a->vendor_id = 0;
    a->vendor_part_id = 0;
    a->hw_ver = 1;
    a->max_qp = 65536;
    a->max_qp_wr = 16384;
    a->device_cap_flags = IBV_DEVICE_RC_RNR_NAK_GEN | IBV_DEVICE_SRQ_RESIZE;
    a->max_sge = MAX_SGE;
    a->max_sge_rd = MAX_SGE;
    a->max_cq = 65536;
    a->max_cqe = 1 << 22;
    a->max_mr = 1 << 20;
    a->max_pd = 65536;
    a->max_qp_rd_atom = 16;
    a->max_ee_rd_atom = 0;
    a->max_res_rd_atom = 1 << 20;
    a->max_qp_init_rd_atom = 16;
    a->atomic_cap = IBV_ATOMIC_HCA;
    a->max_ah = 65536;
    a->max_srq = 65536;
    a->max_srq_wr = 16384;
    a->max_srq_sge = MAX_SGE;
    a->max_pkeys = 1;
    a->local_ca_ack_delay = 15;
    a->phys_port_cnt = 1;
    return 0;
}

EXPORT int ibv_query_port(struct ibv_context *context, uint8_t port, struct _compat_ibv_port_attr *compat) {
    (void)context;
    if (port != 1) return EINVAL;
    struct ibv_port_attr *a = (struct ibv_port_attr *)compat;
    memset(a, 0, sizeof *a);
    a->state = IBV_PORT_ACTIVE;
    a->max_mtu = IBV_MTU_4096;
    a->active_mtu = IBV_MTU_4096;
    a->gid_tbl_len = 1;
    a->port_cap_flags = 0;
    a->max_msg_sz = 1u << 31;
    a->bad_pkey_cntr = 0;
    a->qkey_viol_cntr = 0;
    a->pkey_tbl_len = 1;
    a->lid = dev.lid;
    a->sm_lid = 1;
    a->lmc = 0;
    a->max_vl_num = 1;
    a->sm_sl = 0;
    a->subnet_timeout = 18;
    a->init_type_reply = 0;
    a->active_width = 2;   // 4X
    a->active_speed = 32;  // EDR
    a->phys_state = 5;     // LinkUp
    a->link_layer = IBV_LINK_LAYER_INFINIBAND;
    return 0;
}

// GID 0: the link-local prefix, "wb" and the LID (a GID names the device as the LID does).
static void own_gid(union ibv_gid *gid) {
    memset(gid, 0, sizeof *gid);
    gid->raw[0] = 0xfe;
    gid->raw[1] = 0x80;
    gid->raw[12] = 'w';
    gid->raw[13] = 'b';
    gid->raw[14] = (uint8_t)(dev.lid >> 8);
    gid->raw[15] = (uint8_t)dev.lid;
}

EXPORT int ibv_query_gid(struct ibv_context *context, uint8_t port, int index, union ibv_gid *gid) {
    (void)context;
    if (port != 1 || index != 0) return -1;
    own_gid(gid);
    return 0;
}

EXPORT int _ibv_query_gid_ex(struct ibv_context *context, uint32_t port, uint32_t index,
                             struct ibv_gid_entry *entry, uint32_t flags, size_t size) {
    (void)context; (void)flags;
    if (port != 1 || index != 0 || size < sizeof *entry) return EINVAL;
    memset(entry, 0, sizeof *entry);
    own_gid(&entry->gid);
    entry->gid_index = 0;
    entry->port_num = 1;
    entry->gid_type = IBV_GID_TYPE_IB;
    return 0;
}

EXPORT ssize_t _ibv_query_gid_table(struct ibv_context *context, struct ibv_gid_entry *entries,
                                    size_t max, uint32_t flags, size_t size) {
    if (max < 1) return -EINVAL;
    int r = _ibv_query_gid_ex(context, 1, 0, entries, flags, size);
    return r ? -r : 1;
}

EXPORT int ibv_query_pkey(struct ibv_context *context, uint8_t port, int index, __be16 *pkey) {
    (void)context;
    if (port != 1 || index != 0) return -1;
    *pkey = htobe16(0xffff);
    return 0;
}

EXPORT int ibv_get_pkey_index(struct ibv_context *context, uint8_t port, __be16 pkey) {
    (void)context;
    return port == 1 && be16toh(pkey) == 0xffff ? 0 : -1;
}

EXPORT int ibv_get_async_event(struct ibv_context *context, struct ibv_async_event *event) {
    // The emulated device raises no asynchronous events; this waits as a device without any would.
    char c;
    ssize_t r;
    do { r = read(context->async_fd, &c, 1); } while (r < 0 && errno == EINTR);
    (void)event;
    return -1;
}

EXPORT void ibv_ack_async_event(struct ibv_async_event *event) { (void)event; }

// ---- protection domains and memory regions -------------------------------------------

EXPORT struct ibv_pd *ibv_alloc_pd(struct ibv_context *context) {
    struct wb_pd *pd = calloc(1, sizeof *pd);
    if (!pd) { errno = ENOMEM; return NULL; }
    pd->pd.context = context;
    pthread_mutex_lock(&dev.lock);
    pd->pd.handle = ++dev.next_handle;
    pd->rec = state_new(WB_REC_PD, pd->pd.handle);
    pthread_mutex_unlock(&dev.lock);
    return &pd->pd;
}

EXPORT int ibv_dealloc_pd(struct ibv_pd *ibpd) {
    struct wb_pd *pd = (struct wb_pd *)ibpd;
    pthread_mutex_lock(&dev.lock);
    state_free(pd->rec);
    pthread_mutex_unlock(&dev.lock);
    free(pd);
    return 0;
}

EXPORT struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova, unsigned int access) {
    if (!pd || (!addr && length)) { errno = EINVAL; return NULL; }
    if ((access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) && !(access & IBV_ACCESS_LOCAL_WRITE)) { errno = EINVAL; return NULL; }
    struct wb_mr *m = calloc(1, sizeof *m);
    if (!m) { errno = ENOMEM; return NULL; }
    m->mr.context = pd->context;
    m->mr.pd = pd;
    m->mr.addr = addr;
    m->mr.length = length;
    m->iova = iova;
    m->access = (int)access;
    pthread_mutex_lock(&dev.lock);
    m->mr.handle = ++dev.next_handle;
    m->mr.lkey = m->mr.rkey = dev.next_key++;
    if ((m->rec = state_new(WB_REC_MR, m->mr.lkey))) {
        m->rec->addr = (uint64_t)(uintptr_t)addr;
        m->rec->length = length;
        m->rec->key = m->mr.rkey;
        m->rec->access = access;
        m->rec->pd = pd->handle;
    }
    m->next = dev.mrs;
    dev.mrs = m;
    pthread_mutex_unlock(&dev.lock);
    return &m->mr;
}

EXPORT struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access) {
    return ibv_reg_mr_iova2(pd, addr, length, (uint64_t)(uintptr_t)addr, (unsigned int)access);
}

EXPORT struct ibv_mr *ibv_reg_mr_iova(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova, int access) {
    return ibv_reg_mr_iova2(pd, addr, length, iova, (unsigned int)access);
}

EXPORT struct ibv_mr *ibv_reg_dmabuf_mr(struct ibv_pd *pd, uint64_t offset, size_t length, uint64_t iova, int fd, int access) {
    (void)pd; (void)offset; (void)length; (void)iova; (void)fd; (void)access;
    unsupported("ibv_reg_dmabuf_mr");
    errno = EOPNOTSUPP;
    return NULL;
}

EXPORT int ibv_rereg_mr(struct ibv_mr *mr, int flags, struct ibv_pd *pd, void *addr, size_t length, int access) {
    (void)mr; (void)flags; (void)pd; (void)addr; (void)length; (void)access;
    unsupported("ibv_rereg_mr");
    return EOPNOTSUPP;
}

EXPORT int ibv_dereg_mr(struct ibv_mr *mr) {
    pthread_mutex_lock(&dev.lock);
    for (struct wb_mr **p = &dev.mrs; *p; p = &(*p)->next)
        if (&(*p)->mr == mr) { struct wb_mr *m = *p; *p = m->next; state_free(m->rec); free(m); break; }
    pthread_mutex_unlock(&dev.lock);
    return 0;
}

// ---- completion channels and queues --------------------------------------------------

EXPORT struct ibv_comp_channel *ibv_create_comp_channel(struct ibv_context *context) {
    struct wb_channel *ch = calloc(1, sizeof *ch);
    if (!ch) { errno = ENOMEM; return NULL; }
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) { free(ch); return NULL; }
    ch->channel.context = context;
    ch->channel.fd = p[0];
    ch->write_fd = p[1];
    return &ch->channel;
}

EXPORT int ibv_destroy_comp_channel(struct ibv_comp_channel *channel) {
    struct wb_channel *ch = (struct wb_channel *)channel;
    close(ch->channel.fd);
    close(ch->write_fd);
    free(ch);
    return 0;
}

EXPORT struct ibv_cq *ibv_create_cq(struct ibv_context *context, int cqe, void *cq_context,
                                    struct ibv_comp_channel *channel, int comp_vector) {
    (void)comp_vector;
    if (cqe < 1 || cqe > (1 << 22)) { errno = EINVAL; return NULL; }
    struct wb_cq *cq = calloc(1, sizeof *cq);
    if (!cq) { errno = ENOMEM; return NULL; }
    cq->cap = (uint32_t)cqe + 1;
    cq->ring = calloc(cq->cap, sizeof *cq->ring);
    if (!cq->ring) { free(cq); errno = ENOMEM; return NULL; }
    cq->cq.context = context;
    cq->cq.channel = channel;
    cq->cq.cq_context = cq_context;
    cq->cq.cqe = cqe;
    pthread_mutex_init(&cq->cq.mutex, NULL);
    pthread_cond_init(&cq->cq.cond, NULL);
    pthread_mutex_lock(&dev.lock);
    cq->cq.handle = ++dev.next_handle;
    if ((cq->rec = state_new(WB_REC_CQ, cq->cq.handle))) cq->rec->cqe = (uint32_t)cqe;
    cq->next = dev.cqs;
    dev.cqs = cq;
    pthread_mutex_unlock(&dev.lock);
    return &cq->cq;
}

EXPORT int ibv_resize_cq(struct ibv_cq *cq, int cqe) {
    if (cqe < 1) return EINVAL;
    cq->cqe = cqe; // the ring grows as needed
    return 0;
}

EXPORT int ibv_destroy_cq(struct ibv_cq *ibcq) {
    struct wb_cq *cq = (struct wb_cq *)ibcq;
    pthread_mutex_lock(&dev.lock);
    for (struct wb_qp *q = dev.qps; q; q = q->next)
        if (q->qp.send_cq == ibcq || q->qp.recv_cq == ibcq) { pthread_mutex_unlock(&dev.lock); return EBUSY; }
    for (struct wb_cq **p = &dev.cqs; *p; p = &(*p)->next)
        if (*p == cq) { *p = cq->next; break; }
    state_free(cq->rec);
    pthread_mutex_unlock(&dev.lock);
    free(cq->ring);
    free(cq);
    return 0;
}

EXPORT int ibv_get_cq_event(struct ibv_comp_channel *channel, struct ibv_cq **cq, void **cq_context) {
    struct ibv_cq *p = NULL;
    ssize_t r;
    do { r = read(channel->fd, &p, sizeof p); } while (r < 0 && errno == EINTR);
    if (r != (ssize_t)sizeof p) return -1;
    *cq = p;
    *cq_context = p->cq_context;
    return 0;
}

EXPORT void ibv_ack_cq_events(struct ibv_cq *cq, unsigned int nevents) {
    pthread_mutex_lock(&cq->mutex);
    cq->comp_events_completed += nevents;
    pthread_mutex_unlock(&cq->mutex);
}

// ---- shared receive queues -----------------------------------------------------------

EXPORT struct ibv_srq *ibv_create_srq(struct ibv_pd *pd, struct ibv_srq_init_attr *attr) {
    if (attr->attr.max_sge > MAX_SGE || attr->attr.max_wr > 16384) { errno = EINVAL; return NULL; }
    struct wb_srq *srq = calloc(1, sizeof *srq);
    if (!srq) { errno = ENOMEM; return NULL; }
    srq->srq.context = pd->context;
    srq->srq.srq_context = attr->srq_context;
    srq->srq.pd = pd;
    srq->max_wr = attr->attr.max_wr;
    srq->max_sge = attr->attr.max_sge;
    srq->limit = attr->attr.srq_limit;
    pthread_mutex_init(&srq->srq.mutex, NULL);
    pthread_cond_init(&srq->srq.cond, NULL);
    pthread_mutex_lock(&dev.lock);
    srq->srq.handle = ++dev.next_handle;
    if ((srq->rec = state_new(WB_REC_SRQ, srq->srq.handle))) srq->rec->pd = pd->handle;
    srq->next = dev.srqs;
    dev.srqs = srq;
    pthread_mutex_unlock(&dev.lock);
    return &srq->srq;
}

EXPORT int ibv_modify_srq(struct ibv_srq *ibsrq, struct ibv_srq_attr *attr, int mask) {
    struct wb_srq *srq = (struct wb_srq *)ibsrq;
    if (mask & IBV_SRQ_MAX_WR) srq->max_wr = attr->max_wr;
    if (mask & IBV_SRQ_LIMIT) srq->limit = attr->srq_limit;
    return 0;
}

EXPORT int ibv_query_srq(struct ibv_srq *ibsrq, struct ibv_srq_attr *attr) {
    struct wb_srq *srq = (struct wb_srq *)ibsrq;
    attr->max_wr = srq->max_wr;
    attr->max_sge = srq->max_sge;
    attr->srq_limit = srq->limit;
    return 0;
}

EXPORT int ibv_destroy_srq(struct ibv_srq *ibsrq) {
    struct wb_srq *srq = (struct wb_srq *)ibsrq;
    pthread_mutex_lock(&dev.lock);
    for (struct wb_qp *q = dev.qps; q; q = q->next)
        if (q->qp.srq == ibsrq) { pthread_mutex_unlock(&dev.lock); return EBUSY; }
    for (struct wb_srq **p = &dev.srqs; *p; p = &(*p)->next)
        if (*p == srq) { *p = srq->next; break; }
    state_free(srq->rec);
    pthread_mutex_unlock(&dev.lock);
    free(srq->rq.ring);
    free(srq);
    return 0;
}

// ---- queue pairs ---------------------------------------------------------------------

EXPORT struct ibv_qp *ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *attr) {
    if (attr->qp_type != IBV_QPT_RC && attr->qp_type != IBV_QPT_UC && attr->qp_type != IBV_QPT_UD) {
        unsupported("ibv_create_qp of this QP type (only RC, UC and UD)");
        errno = EOPNOTSUPP;
        return NULL;
    }
    if (!attr->send_cq || !attr->recv_cq || attr->cap.max_send_sge > MAX_SGE || attr->cap.max_recv_sge > MAX_SGE ||
        attr->cap.max_inline_data > MAX_INLINE || attr->cap.max_send_wr > 16384 || attr->cap.max_recv_wr > 16384) {
        errno = EINVAL;
        return NULL;
    }
    struct wb_qp *qp = calloc(1, sizeof *qp);
    if (!qp) { errno = ENOMEM; return NULL; }
    attr->cap.max_inline_data = MAX_INLINE;
    if (attr->cap.max_recv_sge < 1) attr->cap.max_recv_sge = 1;
    if (attr->cap.max_send_sge < 1) attr->cap.max_send_sge = 1;
    qp->init = *attr;
    qp->qp.context = pd->context;
    qp->qp.qp_context = attr->qp_context;
    qp->qp.pd = pd;
    qp->qp.send_cq = attr->send_cq;
    qp->qp.recv_cq = attr->recv_cq;
    qp->qp.srq = attr->srq;
    qp->qp.qp_type = attr->qp_type;
    qp->qp.state = IBV_QPS_RESET;
    qp->attr.qp_state = IBV_QPS_RESET;
    qp->attr.cap = attr->cap;
    qp->sq_sig_all = attr->sq_sig_all;
    qp->out_fd = -1;
    qp->in.fd = -1;
    qp->in.ack_at = SIZE_MAX;
    pthread_mutex_init(&qp->send_lock, NULL);
    pthread_mutex_init(&qp->qp.mutex, NULL);
    pthread_cond_init(&qp->qp.cond, NULL);
    pthread_mutex_lock(&dev.lock);
    qp->qp.handle = ++dev.next_handle;
    qp->qp.qp_num = dev.next_qpn++ & 0xffffff;
    if ((qp->rec = state_new(WB_REC_QP, qp->qp.qp_num))) { qp->rec->type = (uint8_t)attr->qp_type; qp->rec->pd = pd->handle; }
    qp->next = dev.qps;
    dev.qps = qp;
    pthread_mutex_unlock(&dev.lock);
    return &qp->qp;
}

EXPORT struct ibv_qp_ex *ibv_qp_to_qp_ex(struct ibv_qp *qp) {
    (void)qp;
    unsupported("ibv_qp_to_qp_ex (the extended post-send builders)");
    return NULL;
}

EXPORT int ibv_query_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr, int mask, struct ibv_qp_init_attr *init) {
    (void)mask;
    struct wb_qp *qp = (struct wb_qp *)ibqp;
    pthread_mutex_lock(&dev.lock);
    *attr = qp->attr;
    attr->cap = qp->init.cap;
    *init = qp->init;
    pthread_mutex_unlock(&dev.lock);
    return 0;
}

EXPORT int ibv_modify_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr, int mask) {
    struct wb_qp *qp = (struct wb_qp *)ibqp;
    pthread_mutex_lock(&dev.lock);
    struct ibv_qp_attr *a = &qp->attr;
    if (mask & IBV_QP_ACCESS_FLAGS) a->qp_access_flags = attr->qp_access_flags;
    if (mask & IBV_QP_PKEY_INDEX) a->pkey_index = attr->pkey_index;
    if (mask & IBV_QP_PORT) a->port_num = attr->port_num;
    if (mask & IBV_QP_QKEY) a->qkey = attr->qkey;
    if (mask & IBV_QP_AV) a->ah_attr = attr->ah_attr;
    if (mask & IBV_QP_PATH_MTU) a->path_mtu = attr->path_mtu;
    if (mask & IBV_QP_TIMEOUT) a->timeout = attr->timeout;
    if (mask & IBV_QP_RETRY_CNT) a->retry_cnt = attr->retry_cnt;
    if (mask & IBV_QP_RNR_RETRY) a->rnr_retry = attr->rnr_retry;
    if (mask & IBV_QP_RQ_PSN) a->rq_psn = attr->rq_psn;
    if (mask & IBV_QP_MAX_QP_RD_ATOMIC) a->max_rd_atomic = attr->max_rd_atomic;
    if (mask & IBV_QP_MIN_RNR_TIMER) a->min_rnr_timer = attr->min_rnr_timer;
    if (mask & IBV_QP_SQ_PSN) a->sq_psn = attr->sq_psn;
    if (mask & IBV_QP_MAX_DEST_RD_ATOMIC) a->max_dest_rd_atomic = attr->max_dest_rd_atomic;
    if (mask & IBV_QP_DEST_QPN) a->dest_qp_num = attr->dest_qp_num;
    int err = 0;
    int connect_now = 0;
    if (mask & IBV_QP_STATE) {
        enum ibv_qp_state to = attr->qp_state;
        if (to == IBV_QPS_RTR && qp->qp.qp_type != IBV_QPT_UD && a->qp_state != IBV_QPS_RTR) connect_now = 1;
        if (to == IBV_QPS_RESET) {
            if (qp->out_fd >= 0) { close(qp->out_fd); qp->out_fd = -1; }
            if (qp->in.fd >= 0) { close(qp->in.fd); qp->in.fd = -1; }
            qp->out_count = 0;
            qp->rq.count = 0;
            qp->retry_deadline = 0;
        }
        if (to == IBV_QPS_ERR) to_error(qp, IBV_WC_WR_FLUSH_ERR);
        a->qp_state = to;
        qp->qp.state = to;
    }
    uint16_t lid = peer_lid(&a->ah_attr);
    uint32_t dqpn = a->dest_qp_num;
    qp_sync(qp);
    if (qp->rec) qp->rec->peer_lid = lid;
    pthread_mutex_unlock(&dev.lock);
    if (connect_now) {
        // RC and UC: the QP's requests go over its own connection to the peer's device.
        struct wb_where w;
        int found = lid && lookup(lid, &w) == 0;
        int fd = found ? connect_to(&w, qp->qp.qp_num, dqpn) : -1;
        int pull = found ? same_host(&w) : 0;
        if (fd < 0) {
            err = errno ? errno : EHOSTUNREACH;
            fprintf(stderr, "wbsoft0: QP %u cannot reach LID %u QP %u through the fabric directory %s\n",
                    qp->qp.qp_num, lid, dqpn, dev.fabric);
            pthread_mutex_lock(&dev.lock);
            a->qp_state = IBV_QPS_INIT;
            qp->qp.state = IBV_QPS_INIT;
            qp_sync(qp);
            pthread_mutex_unlock(&dev.lock);
            return err;
        }
        pthread_mutex_lock(&dev.lock);
        if (qp->out_fd >= 0) close(qp->out_fd);
        qp->out_fd = fd;
        qp->pull = pull;
        qp->retry_deadline = 0;
        pthread_mutex_unlock(&dev.lock);
        wake_progress();
    }
    return err;
}

// A process that exits with its QPs still open sends what it owes its peers first (see
// conn_close). The lock is waited for a second at most: exit must not hang on it.
__attribute__((destructor)) static void drain_at_exit(void) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1;
    if (pthread_mutex_timedlock(&dev.lock, &until) != 0) return;
    uint64_t deadline = now_ns() + 1000000000ull;
    for (struct wb_qp *q = dev.qps; q; q = q->next) conn_close(&q->in, deadline);
    pthread_mutex_unlock(&dev.lock);
}

EXPORT int ibv_destroy_qp(struct ibv_qp *ibqp) {
    struct wb_qp *qp = (struct wb_qp *)ibqp;
    pthread_mutex_lock(&qp->send_lock);
    pthread_mutex_lock(&dev.lock);
    for (struct wb_qp **p = &dev.qps; *p; p = &(*p)->next)
        if (*p == qp) { *p = qp->next; break; }
    if (qp->out_fd >= 0) close(qp->out_fd);
    conn_close(&qp->in, now_ns() + 1000000000ull);
    while (qp->held) { struct wb_held *h = qp->held; qp->held = h->next; free(h->data); free(h); }
    state_free(qp->rec);
    pthread_mutex_unlock(&dev.lock);
    pthread_mutex_unlock(&qp->send_lock);
    wake_progress();
    free(qp->rq.ring);
    free(qp->outq);
    free(qp->in.outbuf);
    free(qp);
    return 0;
}

// ---- address handles -----------------------------------------------------------------

EXPORT struct ibv_ah *ibv_create_ah(struct ibv_pd *pd, struct ibv_ah_attr *attr) {
    struct wb_ah *ah = calloc(1, sizeof *ah);
    if (!ah) { errno = ENOMEM; return NULL; }
    ah->ah.context = pd->context;
    ah->ah.pd = pd;
    ah->attr = *attr;
    pthread_mutex_lock(&dev.lock);
    ah->ah.handle = ++dev.next_handle;
    if ((ah->rec = state_new(WB_REC_AH, ah->ah.handle))) { ah->rec->peer_lid = peer_lid(attr); ah->rec->pd = pd->handle; }
    pthread_mutex_unlock(&dev.lock);
    return &ah->ah;
}

EXPORT int ibv_destroy_ah(struct ibv_ah *ibah) {
    struct wb_ah *ah = (struct wb_ah *)ibah;
    pthread_mutex_lock(&dev.lock);
    state_free(ah->rec);
    pthread_mutex_unlock(&dev.lock);
    free(ah);
    return 0;
}

EXPORT int ibv_init_ah_from_wc(struct ibv_context *context, uint8_t port, struct ibv_wc *wc,
                               struct ibv_grh *grh, struct ibv_ah_attr *attr) {
    (void)context; (void)grh;
    memset(attr, 0, sizeof *attr);
    attr->dlid = wc->slid;
    attr->port_num = port;
    return 0;
}

EXPORT struct ibv_ah *ibv_create_ah_from_wc(struct ibv_pd *pd, struct ibv_wc *wc, struct ibv_grh *grh, uint8_t port) {
    struct ibv_ah_attr attr;
    ibv_init_ah_from_wc(pd->context, port, wc, grh, &attr);
    return ibv_create_ah(pd, &attr);
}

// ---- what the emulated device does not offer -----------------------------------------

// Says once, on stderr, that the program asked for something the layer does not offer, so
// that the failure the program then reports has its cause beside it.
static void unsupported(const char *call) {
    static char said[32][48];
    static int count;
    pthread_mutex_lock(&dev.lock);
    for (int i = 0; i < count; i++)
        if (!strcmp(said[i], call)) { pthread_mutex_unlock(&dev.lock); return; }
    if (count < 32) snprintf(said[count++], sizeof said[0], "%s", call);
    pthread_mutex_unlock(&dev.lock);
    fprintf(stderr, "wbsoft0: %s is not offered by wb's verbs layer (see docs/infiniband.md); the call fails\n", call);
}

// Direct verbs of vendors' providers take a device of theirs; wbsoft0 is none, and their
// libraries would read this layer's objects as their own. The common entry points say so.
EXPORT int mlx5dv_is_supported(struct ibv_device *device) { (void)device; return 0; }
EXPORT struct ibv_context *mlx5dv_open_device(struct ibv_device *device, void *attr) {
    (void)device; (void)attr; unsupported("mlx5dv_open_device"); errno = EOPNOTSUPP; return NULL;
}
EXPORT int mlx5dv_query_device(struct ibv_context *context, void *attr) {
    (void)context; (void)attr; unsupported("mlx5dv_query_device"); return EOPNOTSUPP;
}
EXPORT int mlx5dv_init_obj(void *obj, uint64_t type) { (void)obj; (void)type; unsupported("mlx5dv_init_obj"); return EOPNOTSUPP; }
EXPORT struct ibv_qp *mlx5dv_create_qp(struct ibv_context *context, void *attr, void *dv) {
    (void)context; (void)attr; (void)dv; unsupported("mlx5dv_create_qp"); errno = EOPNOTSUPP; return NULL;
}
EXPORT void *mlx5dv_create_cq(struct ibv_context *context, void *attr, void *dv) {
    (void)context; (void)attr; (void)dv; unsupported("mlx5dv_create_cq"); errno = EOPNOTSUPP; return NULL;
}
EXPORT int efadv_query_device(struct ibv_context *context, void *attr, uint32_t len) {
    (void)context; (void)attr; (void)len; unsupported("efadv_query_device"); return EOPNOTSUPP;
}

EXPORT int ibv_attach_mcast(struct ibv_qp *qp, const union ibv_gid *gid, uint16_t lid) {
    (void)qp; (void)gid; (void)lid;
    unsupported("ibv_attach_mcast (multicast)");
    return EOPNOTSUPP;
}

EXPORT int ibv_detach_mcast(struct ibv_qp *qp, const union ibv_gid *gid, uint16_t lid) {
    (void)qp; (void)gid; (void)lid;
    return EOPNOTSUPP;
}

EXPORT int ibv_query_ece(struct ibv_qp *qp, struct ibv_ece *ece) { (void)qp; (void)ece; return EOPNOTSUPP; }
EXPORT int ibv_set_ece(struct ibv_qp *qp, struct ibv_ece *ece) { (void)qp; (void)ece; return EOPNOTSUPP; }
EXPORT struct ibv_context *ibv_import_device(int cmd_fd) { (void)cmd_fd; errno = EOPNOTSUPP; return NULL; }
EXPORT struct ibv_pd *ibv_import_pd(struct ibv_context *c, uint32_t h) { (void)c; (void)h; errno = EOPNOTSUPP; return NULL; }
EXPORT struct ibv_mr *ibv_import_mr(struct ibv_pd *pd, uint32_t h) { (void)pd; (void)h; errno = EOPNOTSUPP; return NULL; }
