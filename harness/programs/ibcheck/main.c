// harness-ibcheck: the semantics verbs applications rely on, checked on whatever device
// libibverbs gives (run under `wb run --ib`: wbsoft0). One process, pairs of queue pairs
// connected to each other through the device. Prints "PASS name" or "FAIL name: why" per
// check, then "DONE passed=P failed=F", and exits 0 when nothing failed.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <infiniband/verbs.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "../../../native/verbs/wbverbs_wire.h"

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_port_attr port;
static int passed, failed;
static uint8_t *mem;
static struct ibv_mr *mr;
enum { MEM = 1 << 20 };

static void result(const char *name, const char *why) {
    if (why) { printf("FAIL %s: %s\n", name, why); failed++; }
    else { printf("PASS %s\n", name); passed++; }
    fflush(stdout);
}

static void die(const char *what) {
    printf("FAIL setup: %s (%s)\n", what, strerror(errno));
    exit(1);
}

// One completion from cq within 5 s (0 when none came).
static int wait_wc(struct ibv_cq *cq, struct ibv_wc *wc) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int n = ibv_poll_cq(cq, 1, wc);
        if (n < 0) die("poll_cq");
        if (n == 1) return 1;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 5) return 0;
    }
}

struct pair {
    struct ibv_cq *cq_a, *cq_b;
    struct ibv_qp *a, *b;
};

static void connect_qp(struct ibv_qp *qp, struct ibv_qp *peer, enum ibv_qp_type type, uint8_t rnr_retry) {
    struct ibv_qp_attr at = {.qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = 1};
    int mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT;
    if (type == IBV_QPT_UD) { at.qkey = 0x11111111; mask |= IBV_QP_QKEY; }
    else { at.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC | IBV_ACCESS_LOCAL_WRITE; mask |= IBV_QP_ACCESS_FLAGS; }
    if (ibv_modify_qp(qp, &at, mask)) die("QP to INIT");
    memset(&at, 0, sizeof at);
    at.qp_state = IBV_QPS_RTR;
    mask = IBV_QP_STATE;
    if (type != IBV_QPT_UD) {
        at.path_mtu = IBV_MTU_1024; at.dest_qp_num = peer->qp_num; at.rq_psn = 0;
        at.ah_attr.dlid = port.lid; at.ah_attr.port_num = 1;
        mask |= IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN;
        if (type == IBV_QPT_RC) { at.max_dest_rd_atomic = 4; at.min_rnr_timer = 12; mask |= IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER; }
    }
    if (ibv_modify_qp(qp, &at, mask)) die("QP to RTR");
    memset(&at, 0, sizeof at);
    at.qp_state = IBV_QPS_RTS;
    at.sq_psn = 0;
    mask = IBV_QP_STATE | IBV_QP_SQ_PSN;
    if (type == IBV_QPT_RC) {
        at.timeout = 14; at.retry_cnt = 7; at.rnr_retry = rnr_retry; at.max_rd_atomic = 4;
        mask |= IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC;
    }
    if (ibv_modify_qp(qp, &at, mask)) die("QP to RTS");
}

static struct pair make_pair(enum ibv_qp_type type, struct ibv_srq *srq, uint8_t rnr_retry) {
    struct pair p;
    p.cq_a = ibv_create_cq(ctx, 256, NULL, NULL, 0);
    p.cq_b = ibv_create_cq(ctx, 256, NULL, NULL, 0);
    if (!p.cq_a || !p.cq_b) die("create_cq");
    struct ibv_qp_init_attr ia = {.send_cq = p.cq_a, .recv_cq = p.cq_a, .qp_type = type,
                                  .cap = {.max_send_wr = 64, .max_recv_wr = 64, .max_send_sge = 2, .max_recv_sge = 2, .max_inline_data = 64}};
    p.a = ibv_create_qp(pd, &ia);
    ia.send_cq = ia.recv_cq = p.cq_b;
    ia.srq = srq;
    p.b = ibv_create_qp(pd, &ia);
    if (!p.a || !p.b) die("create_qp");
    connect_qp(p.a, p.b, type, rnr_retry);
    connect_qp(p.b, p.a, type, rnr_retry);
    return p;
}

static int post_recv(struct ibv_qp *qp, uint64_t id, void *buf, uint32_t len) {
    struct ibv_sge sge = {.addr = (uintptr_t)buf, .length = len, .lkey = mr->lkey};
    struct ibv_recv_wr wr = {.wr_id = id, .sg_list = &sge, .num_sge = 1}, *bad;
    return ibv_post_recv(qp, &wr, &bad);
}

static int post(struct ibv_qp *qp, enum ibv_wr_opcode op, uint64_t id, void *buf, uint32_t len, uint32_t lkey,
                uint64_t raddr, uint32_t rkey, uint32_t imm, int flags) {
    struct ibv_sge sge = {.addr = (uintptr_t)buf, .length = len, .lkey = lkey};
    struct ibv_send_wr wr = {.wr_id = id, .sg_list = &sge, .num_sge = 1, .opcode = op, .send_flags = IBV_SEND_SIGNALED | flags, .imm_data = imm}, *bad;
    wr.wr.rdma.remote_addr = raddr;
    wr.wr.rdma.rkey = rkey;
    return ibv_post_send(qp, &wr, &bad);
}

static char why[256];
#define CHECK(cond, ...) do { if (!(cond)) { snprintf(why, sizeof why, __VA_ARGS__); return why; } } while (0)

static const char *send_recv_imm(void) {
    struct pair p = make_pair(IBV_QPT_RC, NULL, 7);
    uint8_t *src = mem, *dst = mem + 4096;
    memcpy(src, "hello, verbs", 13);
    CHECK(!post_recv(p.b, 7, dst, 64), "post_recv");
    CHECK(!post(p.a, IBV_WR_SEND_WITH_IMM, 1, src, 13, mr->lkey, 0, 0, htonl(0xabcd), 0), "post_send");
    struct ibv_wc wc;
    CHECK(wait_wc(p.cq_b, &wc), "no receive completion");
    CHECK(wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RECV && wc.wr_id == 7 && wc.byte_len == 13, "recv wc status %d opcode %d len %u", wc.status, wc.opcode, wc.byte_len);
    CHECK((wc.wc_flags & IBV_WC_WITH_IMM) && ntohl(wc.imm_data) == 0xabcd && wc.qp_num == p.b->qp_num, "immediate data");
    CHECK(!memcmp(dst, "hello, verbs", 13), "data");
    CHECK(wait_wc(p.cq_a, &wc) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_SEND && wc.wr_id == 1, "send completion");
    return NULL;
}

static const char *write_read_atomics(void) {
    struct pair p = make_pair(IBV_QPT_RC, NULL, 7);
    // 16 KiB: on one host wbsoft0 moves payloads this large between the processes' memory.
    enum { N = 16384 };
    uint8_t *src = mem + 131072, *remote = mem + 262144, *back = mem + 393216;
    for (int i = 0; i < N; i++) src[i] = (uint8_t)(i * 7);
    CHECK(!post_recv(p.b, 9, mem + 65536, 16), "post_recv");
    CHECK(!post(p.a, IBV_WR_RDMA_WRITE_WITH_IMM, 2, src, N, mr->lkey, (uintptr_t)remote, mr->rkey, htonl(42), 0), "write");
    struct ibv_wc wc;
    CHECK(wait_wc(p.cq_a, &wc) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RDMA_WRITE, "write completion %d", wc.status);
    CHECK(wait_wc(p.cq_b, &wc) && wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM && ntohl(wc.imm_data) == 42 && wc.wr_id == 9, "write-with-immediate receive");
    CHECK(!memcmp(src, remote, N), "written data");
    CHECK(!post(p.a, IBV_WR_RDMA_READ, 3, back, N, mr->lkey, (uintptr_t)remote, mr->rkey, 0, 0), "read");
    CHECK(wait_wc(p.cq_a, &wc) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RDMA_READ && wc.byte_len == N, "read completion");
    CHECK(!memcmp(back, remote, N), "read data");
    uint64_t *counter = (uint64_t *)(mem + 32768), *old = (uint64_t *)(mem + 32776);
    *counter = 100;
    struct ibv_sge sge = {.addr = (uintptr_t)old, .length = 8, .lkey = mr->lkey};
    struct ibv_send_wr wr = {.wr_id = 4, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_ATOMIC_FETCH_AND_ADD, .send_flags = IBV_SEND_SIGNALED}, *bad;
    wr.wr.atomic.remote_addr = (uintptr_t)counter; wr.wr.atomic.rkey = mr->rkey; wr.wr.atomic.compare_add = 5;
    CHECK(!ibv_post_send(p.a, &wr, &bad), "fetch-add");
    CHECK(wait_wc(p.cq_a, &wc) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_FETCH_ADD, "fetch-add completion");
    CHECK(*old == 100 && *counter == 105, "fetch-add: old %llu now %llu", (unsigned long long)*old, (unsigned long long)*counter);
    wr.opcode = IBV_WR_ATOMIC_CMP_AND_SWP; wr.wr.atomic.compare_add = 105; wr.wr.atomic.swap = 7;
    CHECK(!ibv_post_send(p.a, &wr, &bad) && wait_wc(p.cq_a, &wc) && wc.status == IBV_WC_SUCCESS, "compare-swap");
    CHECK(*old == 105 && *counter == 7, "compare-swap that matches");
    wr.wr.atomic.compare_add = 1000; wr.wr.atomic.swap = 9;
    CHECK(!ibv_post_send(p.a, &wr, &bad) && wait_wc(p.cq_a, &wc) && wc.status == IBV_WC_SUCCESS, "compare-swap");
    CHECK(*old == 7 && *counter == 7, "compare-swap that does not match");
    return NULL;
}

static const char *inline_uc_srq(void) {
    struct ibv_srq_init_attr sa = {.attr = {.max_wr = 64, .max_sge = 1}};
    struct ibv_srq *srq = ibv_create_srq(pd, &sa);
    CHECK(srq, "create_srq");
    struct pair p1 = make_pair(IBV_QPT_RC, srq, 7), p2 = make_pair(IBV_QPT_UC, srq, 7);
    for (int i = 0; i < 4; i++) {
        struct ibv_sge sge = {.addr = (uintptr_t)(mem + 40960 + i * 64), .length = 64, .lkey = mr->lkey};
        struct ibv_recv_wr wr = {.wr_id = 100 + i, .sg_list = &sge, .num_sge = 1}, *bad;
        CHECK(!ibv_post_srq_recv(srq, &wr, &bad), "post_srq_recv");
    }
    char msg[] = "inline!";
    CHECK(!post(p1.a, IBV_WR_SEND, 5, msg, sizeof msg, 0, 0, 0, 0, IBV_SEND_INLINE), "inline send (no lkey)");
    CHECK(!post(p2.a, IBV_WR_SEND, 6, mem, 16, mr->lkey, 0, 0, 0, 0), "UC send");
    struct ibv_wc wc;
    int got = 0;
    for (int i = 0; i < 2; i++) {
        struct ibv_cq *cq = i == 0 ? p1.cq_b : p2.cq_b;
        CHECK(wait_wc(cq, &wc) && wc.status == IBV_WC_SUCCESS && wc.wr_id >= 100 && wc.wr_id < 104, "SRQ receive %d", i);
        got++;
    }
    CHECK(!memcmp(mem + 40960, "inline!", 8) || !memcmp(mem + 41024, "inline!", 8), "inline data");
    return NULL;
}

static const char *ud(void) {
    struct pair p = make_pair(IBV_QPT_UD, NULL, 7);
    struct ibv_ah_attr aa = {.dlid = port.lid, .port_num = 1};
    struct ibv_ah *ah = ibv_create_ah(pd, &aa);
    CHECK(ah, "create_ah");
    CHECK(!post_recv(p.b, 11, mem + 49152, 40 + 256), "post_recv");
    memcpy(mem + 53248, "datagram", 9);
    struct ibv_sge sge = {.addr = (uintptr_t)(mem + 53248), .length = 9, .lkey = mr->lkey};
    struct ibv_send_wr wr = {.wr_id = 12, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED}, *bad;
    wr.wr.ud.ah = ah; wr.wr.ud.remote_qpn = p.b->qp_num; wr.wr.ud.remote_qkey = 0x11111111;
    CHECK(!ibv_post_send(p.a, &wr, &bad), "UD send");
    struct ibv_wc wc;
    CHECK(wait_wc(p.cq_b, &wc) && wc.status == IBV_WC_SUCCESS && wc.byte_len == 40 + 9 && wc.src_qp == p.a->qp_num, "UD receive (len %u src %u)", wc.byte_len, wc.src_qp);
    CHECK(!memcmp(mem + 49152 + 40, "datagram", 9), "UD data after the GRH");
    return NULL;
}

static const char *rnr_waits_in_order(void) {
    struct pair p = make_pair(IBV_QPT_RC, NULL, 7);
    memcpy(mem + 57344, "first", 6);
    memcpy(mem + 57352, "second", 7);
    CHECK(!post(p.a, IBV_WR_SEND, 21, mem + 57344, 6, mr->lkey, 0, 0, 0, 0), "send 1");
    CHECK(!post(p.a, IBV_WR_SEND, 22, mem + 57352, 7, mr->lkey, 0, 0, 0, 0), "send 2");
    usleep(100000);
    struct ibv_wc wc;
    CHECK(ibv_poll_cq(p.cq_a, 1, &wc) == 0, "a send completed with no receive posted");
    CHECK(!post_recv(p.b, 31, mem + 61440, 16) && !post_recv(p.b, 32, mem + 61456, 16), "post_recv");
    CHECK(wait_wc(p.cq_b, &wc) && wc.wr_id == 31 && wc.byte_len == 6, "first receive");
    CHECK(wait_wc(p.cq_b, &wc) && wc.wr_id == 32 && wc.byte_len == 7, "second receive");
    CHECK(!memcmp(mem + 61440, "first", 6) && !memcmp(mem + 61456, "second", 7), "order");
    CHECK(wait_wc(p.cq_a, &wc) && wc.wr_id == 21 && wc.status == IBV_WC_SUCCESS, "send 1 completion");
    CHECK(wait_wc(p.cq_a, &wc) && wc.wr_id == 22 && wc.status == IBV_WC_SUCCESS, "send 2 completion");
    return NULL;
}

static const char *rnr_retries_run_out(void) {
    struct pair p = make_pair(IBV_QPT_RC, NULL, 1);
    CHECK(!post(p.a, IBV_WR_SEND, 41, mem, 8, mr->lkey, 0, 0, 0, 0), "send");
    CHECK(!post(p.a, IBV_WR_SEND, 42, mem, 8, mr->lkey, 0, 0, 0, 0), "send");
    struct ibv_wc wc;
    CHECK(wait_wc(p.cq_a, &wc) && wc.wr_id == 41 && wc.status == IBV_WC_RNR_RETRY_EXC_ERR, "first send: status %d", wc.status);
    CHECK(wait_wc(p.cq_a, &wc) && wc.wr_id == 42 && wc.status == IBV_WC_WR_FLUSH_ERR, "second send: status %d", wc.status);
    struct ibv_qp_attr at;
    struct ibv_qp_init_attr ia;
    CHECK(!ibv_query_qp(p.a, &at, IBV_QP_STATE, &ia) && at.qp_state == IBV_QPS_ERR, "QP state %d", at.qp_state);
    return NULL;
}

static const char *errors_and_flushes(void) {
    struct pair p = make_pair(IBV_QPT_RC, NULL, 7);
    CHECK(!post_recv(p.a, 51, mem, 16), "post_recv");
    CHECK(!post(p.a, IBV_WR_RDMA_WRITE, 52, mem, 64, mr->lkey, (uintptr_t)mem, mr->rkey + 1000, 0, 0), "write");
    struct ibv_wc wc;
    int saw_access = 0, saw_flush = 0;
    for (int i = 0; i < 2; i++) {
        CHECK(wait_wc(p.cq_a, &wc), "completion %d", i);
        if (wc.wr_id == 52 && wc.status == IBV_WC_REM_ACCESS_ERR) saw_access = 1;
        if (wc.wr_id == 51 && wc.status == IBV_WC_WR_FLUSH_ERR) saw_flush = 1;
    }
    CHECK(saw_access && saw_flush, "a bad rkey: access error %d, receive flushed %d", saw_access, saw_flush);
    struct pair q = make_pair(IBV_QPT_RC, NULL, 7);
    CHECK(!post(q.a, IBV_WR_SEND, 53, mem, 64, mr->lkey + 1000, 0, 0, 0, 0), "send");
    CHECK(wait_wc(q.cq_a, &wc) && wc.wr_id == 53 && wc.status != IBV_WC_SUCCESS, "a bad lkey: status %d", wc.status);
    struct pair r = make_pair(IBV_QPT_RC, NULL, 7);
    CHECK(!post_recv(r.b, 54, mem, 16), "post_recv");
    struct ibv_qp_attr at = {.qp_state = IBV_QPS_ERR};
    CHECK(!ibv_modify_qp(r.b, &at, IBV_QP_STATE), "QP to ERR");
    CHECK(wait_wc(r.cq_b, &wc) && wc.wr_id == 54 && wc.status == IBV_WC_WR_FLUSH_ERR, "flushed receive");
    return NULL;
}

// A peer whose QP is gone does not answer: the request fails with IBV_WC_RETRY_EXC_ERR once
// the requester's retries run out (timeout 14, retry_cnt 7: 8 x 67 ms), not at once.
static const char *a_gone_peer_fails_after_the_retries(void) {
    struct pair p = make_pair(IBV_QPT_RC, NULL, 7);
    struct ibv_wc wc;
    CHECK(!post_recv(p.b, 61, mem + 4096, 64), "post_recv");
    CHECK(!post(p.a, IBV_WR_SEND, 62, mem, 64, mr->lkey, 0, 0, 0, 0), "send");
    CHECK(wait_wc(p.cq_a, &wc) && wc.wr_id == 62 && wc.status == IBV_WC_SUCCESS, "send before: status %d", wc.status);
    CHECK(ibv_destroy_qp(p.b) == 0, "destroy_qp");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(!post(p.a, IBV_WR_SEND, 63, mem, 64, mr->lkey, 0, 0, 0, 0), "send");
    CHECK(wait_wc(p.cq_a, &wc) && wc.wr_id == 63 && wc.status == IBV_WC_RETRY_EXC_ERR, "send to a gone peer: status %d", wc.status);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(s > 0.4 && s < 3, "failed after %.3f s, not after the retries (0.54 s)", s);
    struct ibv_qp_attr at;
    struct ibv_qp_init_attr ia;
    CHECK(!ibv_query_qp(p.a, &at, IBV_QP_STATE, &ia) && at.qp_state == IBV_QPS_ERR, "QP state %d", at.qp_state);
    return NULL;
}

static const char *completion_channel(void) {
    struct ibv_comp_channel *ch = ibv_create_comp_channel(ctx);
    CHECK(ch, "create_comp_channel");
    struct ibv_cq *cq = ibv_create_cq(ctx, 16, (void *)0x5eed, ch, 0);
    struct ibv_cq *other = ibv_create_cq(ctx, 16, NULL, NULL, 0);
    struct ibv_qp_init_attr ia = {.send_cq = other, .recv_cq = cq, .qp_type = IBV_QPT_RC, .cap = {.max_send_wr = 8, .max_recv_wr = 8, .max_send_sge = 1, .max_recv_sge = 1}};
    struct ibv_qp *b = ibv_create_qp(pd, &ia);
    ia.recv_cq = other;
    struct ibv_qp *a = ibv_create_qp(pd, &ia);
    CHECK(a && b, "create_qp");
    connect_qp(a, b, IBV_QPT_RC, 7);
    connect_qp(b, a, IBV_QPT_RC, 7);
    CHECK(!ibv_req_notify_cq(cq, 0), "req_notify_cq");
    CHECK(!post_recv(b, 61, mem, 16) && !post(a, IBV_WR_SEND, 62, mem, 8, mr->lkey, 0, 0, 0, 0), "post");
    struct pollfd pfd = {.fd = ch->fd, .events = POLLIN};
    CHECK(poll(&pfd, 1, 5000) == 1, "the channel's fd did not become readable");
    struct ibv_cq *ev;
    void *evctx;
    CHECK(!ibv_get_cq_event(ch, &ev, &evctx) && ev == cq && evctx == (void *)0x5eed, "event");
    ibv_ack_cq_events(cq, 1);
    struct ibv_wc wc;
    CHECK(ibv_poll_cq(cq, 1, &wc) == 1 && wc.wr_id == 61, "completion after the event");
    return NULL;
}

static const char *what_is_not_offered(void) {
    struct pair p = make_pair(IBV_QPT_RC, NULL, 7);
    struct ibv_qp_ex *x = ibv_qp_to_qp_ex(p.a);
    if (strcmp(ibv_get_device_name(ctx->device), "wbsoft0")) return NULL; // a real device may offer them
    CHECK(x == NULL, "the extended post-send API is there");
    struct ibv_qp_init_attr ia = {.send_cq = p.cq_a, .recv_cq = p.cq_a, .qp_type = IBV_QPT_RAW_PACKET, .cap = {.max_send_wr = 1, .max_send_sge = 1}};
    errno = 0;
    CHECK(ibv_create_qp(pd, &ia) == NULL && errno == EOPNOTSUPP, "a raw packet QP was made (errno %d)", errno);
    return NULL;
}

// A peer that forges a request asking wbsoft0 to take a WRITE's payload from another process
// of this host (one holding a secret) is refused; asking for its own memory works, so the
// refusal is the check's. Speaks wbsoft0's wire protocol directly, as a hostile peer would.
static char secret[64];

static int forge_write(uint16_t lid, uint32_t dst_qpn, pid_t from, const void *src, void *dst, uint32_t rkey) {
    char path[300], line[256];
    const char *fabric = getenv("WB_IB_FABRIC");
    snprintf(path, sizeof path, "%s/lid-%u", fabric && *fabric ? fabric : "/tmp/wbsoft-fabric", lid);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(line, sizeof line, f)) { if (f) fclose(f); return -1; }
    fclose(f);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(line))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) return -1;
    struct wb_hello h = {.magic = WB_HELLO_MAGIC, .src_lid = lid, .src_qpn = 0x999, .dst_qpn = dst_qpn};
    struct wb_hdr w = {.op = WB_WRITE, .flags = WB_FLAG_PULL, .addr = (uintptr_t)dst, .rkey = rkey, .len = 32,
                       .a = (uintptr_t)src, .b = (uint64_t)from};
    if (write(fd, &h, sizeof h) != sizeof h || write(fd, &w, sizeof w) != sizeof w) { close(fd); return -1; }
    return fd;
}

static const char *forged_pulls_are_refused(void) {
    if (strcmp(ibv_get_device_name(ctx->device), "wbsoft0")) return NULL;
    struct pair p = make_pair(IBV_QPT_RC, NULL, 7);
    snprintf(secret, sizeof secret, "SECRET-%d", getpid());
    int ready[2];
    CHECK(pipe(ready) == 0, "pipe");
    pid_t holder = fork();
    if (holder == 0) {
        snprintf(secret, sizeof secret, "CHILD-SECRET");
        if (write(ready[1], "r", 1) != 1) _exit(1);
        pause();
        _exit(0);
    }
    char c;
    CHECK(read(ready[0], &c, 1) == 1, "the secret holder did not start");
    uint8_t *dst = mem + 458752;
    memset(dst, 0, 64);
    // Another process's memory: refused, the connection dropped, nothing written.
    int fd = forge_write((uint16_t)port.lid, p.b->qp_num, holder, secret, dst, mr->rkey);
    CHECK(fd >= 0, "could not reach the device's listener");
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct wb_hdr answer;
    ssize_t n = read(fd, &answer, sizeof answer);
    close(fd);
    kill(holder, SIGKILL);
    waitpid(holder, NULL, 0);
    CHECK(n == 0, "the device answered a pull from another process (%zd)", n);
    CHECK(memcmp(dst, "CHILD-SECRET", 12) != 0, "the device copied another process's memory");
    // This process's own memory (the end it holds): taken, and acknowledged.
    fd = forge_write((uint16_t)port.lid, p.b->qp_num, getpid(), secret, dst, mr->rkey);
    CHECK(fd >= 0, "could not reach the device's listener");
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    n = read(fd, &answer, sizeof answer);
    close(fd);
    CHECK(n == (ssize_t)sizeof answer && answer.op == WB_ACK && answer.status == 0, "a pull from the peer itself was not acknowledged");
    CHECK(!strcmp((char *)dst, secret), "a pull from the peer itself did not land");
    return NULL;
}

int main(void) {
    struct ibv_device **devs = ibv_get_device_list(NULL);
    if (!devs || !devs[0]) die("no verbs device");
    ctx = ibv_open_device(devs[0]);
    if (!ctx || ibv_query_port(ctx, 1, &port)) die("open/query");
    pd = ibv_alloc_pd(ctx);
    mem = aligned_alloc(4096, MEM);
    memset(mem, 0, MEM);
    mr = ibv_reg_mr(pd, mem, MEM, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC);
    if (!pd || !mr) die("pd/mr");
    result("send-recv-with-immediate", send_recv_imm());
    result("rdma-write-read-atomics", write_read_atomics());
    result("inline-uc-srq", inline_uc_srq());
    result("ud-with-address-handle", ud());
    result("rnr-waits-in-order", rnr_waits_in_order());
    result("rnr-retries-run-out", rnr_retries_run_out());
    result("errors-and-flushes", errors_and_flushes());
    result("a-gone-peer-fails-after-the-retries", a_gone_peer_fails_after_the_retries());
    result("completion-channel", completion_channel());
    result("what-is-not-offered-fails-cleanly", what_is_not_offered());
    result("forged-pulls-are-refused", forged_pulls_are_refused());
    printf("DONE passed=%d failed=%d\n", passed, failed);
    return failed ? 1 : 0;
}
