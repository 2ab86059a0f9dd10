// harness-ibring --rank R --listen HOST:PORT --next HOST:PORT --blocks B --out FILE [--gap-us U] [--ranks N]
//
// One rank of a ring of InfiniBand verbs processes (run under `wb run --ib`), a target for
// checkpoints of verbs jobs. Each rank has two RC queue pairs, one to the next rank and one
// from the previous, whose receives come from one shared receive queue. It RDMA-writes B
// blocks of 16 KiB into the next rank's ring buffer of 8 slots (RDMA WRITE with immediate:
// the block's number), each block pseudo-random with a checksum in its last 8 bytes; the
// next rank checks the block and its number (each exactly once, in order) and gives the slot
// back with a SEND carrying the number (a credit). QP numbers, LIDs, buffer addresses and
// keys are exchanged over TCP with the neighbours at the start, as MPI does out of band.
// It prints "READY rank R pid N" once its QPs are up, and at the end writes
// "OK rank R blocks=B sum=S" (S: the sum of the checksums of the blocks it received, checked
// against the blocks the previous rank makes), or "FAIL ..." to FILE and exits 0 (or 1).
// --gap-us: a pause between blocks sent; --ranks: the ring's size (4).
#define _GNU_SOURCE
#include "harness.h"
#include <arpa/inet.h>
#include <errno.h>
#include <infiniband/verbs.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { SLOTS = 8, BLOCK = 16384, RECVS = 64 };

struct peer_info {
    uint32_t lid, qpn, rkey, pad;
    uint64_t addr;
};

static int rank;
// Globals, so that a debugger on a restored rank finds them.
struct ibv_qp *to_next, *from_prev;

static void die(const char *what) {
    fprintf(stderr, "harness-ibring rank %d: %s (%s)\n", rank, what, strerror(errno));
    exit(2);
}

static uint64_t block_sum(const uint8_t *b, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

// Block `seq` from rank `from`: deterministic bytes, the checksum in its last 8.
static void fill_block(uint8_t *b, int from, uint32_t seq) {
    uint64_t x = ((uint64_t)from << 32 | seq) * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i + 8 <= BLOCK - 8; i += 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        memcpy(b + i, &x, 8);
    }
    uint64_t s = block_sum(b, BLOCK - 8);
    memcpy(b + BLOCK - 8, &s, 8);
}


static void full(int fd, void *buf, size_t len, int writing) {
    uint8_t *p = buf;
    while (len) {
        ssize_t n = writing ? write(fd, p, len) : read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("exchanging QP information");
        p += n;
        len -= (size_t)n;
    }
}

static void to_rts(struct ibv_qp *qp, uint32_t lid, uint32_t qpn) {
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = 1,
                            .qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE};
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) die("QP to INIT");
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = IBV_MTU_4096;
    a.dest_qp_num = qpn;
    a.rq_psn = 0;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;
    a.ah_attr.dlid = (uint16_t)lid;
    a.ah_attr.port_num = 1;
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                              IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)) die("QP to RTR");
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = 7;
    a.sq_psn = 0;
    a.max_rd_atomic = 1;
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                              IBV_QP_MAX_QP_RD_ATOMIC)) die("QP to RTS");
}

int main(int argc, char **argv) {
    const char *listen_at = NULL, *next_at = NULL, *out = NULL;
    uint32_t blocks = 1000;
    int ranks = 4;
    long gap = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rank")) rank = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--listen")) listen_at = argv[i + 1];
        else if (!strcmp(argv[i], "--next")) next_at = argv[i + 1];
        else if (!strcmp(argv[i], "--blocks")) blocks = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
        else if (!strcmp(argv[i], "--gap-us")) gap = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--ranks")) ranks = atoi(argv[i + 1]);
    }
    if (!listen_at || !next_at || !out) {
        fprintf(stderr, "usage: harness-ibring --rank R --listen HOST:PORT --next HOST:PORT --blocks B --out FILE [--gap-us U] [--ranks N]\n");
        return 2;
    }
    struct ibv_device **devs = ibv_get_device_list(NULL);
    if (!devs || !devs[0]) die("no verbs device");
    struct ibv_context *ctx = ibv_open_device(devs[0]);
    if (!ctx) die("opening the device");
    struct ibv_port_attr port;
    if (ibv_query_port(ctx, 1, &port)) die("querying the port");
    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    uint8_t *ring = aligned_alloc(4096, SLOTS * BLOCK), *src = aligned_alloc(4096, SLOTS * BLOCK);
    uint32_t *credit_in = aligned_alloc(4096, 4096), *credit_out = aligned_alloc(4096, 4096);
    memset(ring, 0, SLOTS * BLOCK);
    struct ibv_mr *ring_mr = ibv_reg_mr(pd, ring, SLOTS * BLOCK, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    struct ibv_mr *src_mr = ibv_reg_mr(pd, src, SLOTS * BLOCK, IBV_ACCESS_LOCAL_WRITE);
    struct ibv_mr *cin_mr = ibv_reg_mr(pd, credit_in, 4096, IBV_ACCESS_LOCAL_WRITE);
    struct ibv_mr *cout_mr = ibv_reg_mr(pd, credit_out, 4096, IBV_ACCESS_LOCAL_WRITE);
    struct ibv_cq *cq = ibv_create_cq(ctx, 1024, NULL, NULL, 0);
    struct ibv_srq_init_attr sa = {.attr = {.max_wr = RECVS * 2, .max_sge = 1}};
    struct ibv_srq *srq = ibv_create_srq(pd, &sa);
    if (!pd || !ring_mr || !src_mr || !cin_mr || !cout_mr || !cq || !srq) die("creating verbs objects");
    struct ibv_qp_init_attr qa = {.send_cq = cq, .recv_cq = cq, .srq = srq, .qp_type = IBV_QPT_RC,
                                  .cap = {.max_send_wr = 64, .max_recv_wr = 0, .max_send_sge = 1, .max_recv_sge = 1}};
    to_next = ibv_create_qp(pd, &qa);
    from_prev = ibv_create_qp(pd, &qa);
    if (!to_next || !from_prev) die("creating QPs");
    for (int i = 0; i < RECVS; i++) {
        struct ibv_sge sge = {.addr = (uintptr_t)&credit_in[i], .length = 4, .lkey = cin_mr->lkey};
        struct ibv_recv_wr wr = {.wr_id = (uint64_t)i, .sg_list = &sge, .num_sge = 1}, *bad;
        if (ibv_post_srq_recv(srq, &wr, &bad)) die("posting receives");
    }

    // Out of band: connect to the next rank, accept the previous one, swap what each needs.
    struct sockaddr_in me, nx;
    harness_parse_ipv4("harness-ibring", listen_at, &me);
    harness_parse_ipv4("harness-ibring", next_at, &nx);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&me, sizeof me) || listen(lfd, 4)) die("listening");
    int nfd = -1;
    for (int tries = 0; tries < 300 && nfd < 0; tries++) {
        nfd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(nfd, (struct sockaddr *)&nx, sizeof nx)) { close(nfd); nfd = -1; usleep(100000); }
    }
    if (nfd < 0) die("connecting to the next rank");
    int pfd = accept(lfd, NULL, NULL);
    if (pfd < 0) die("accepting the previous rank");
    struct peer_info mine_next = {.lid = port.lid, .qpn = to_next->qp_num};
    struct peer_info mine_prev = {.lid = port.lid, .qpn = from_prev->qp_num, .rkey = ring_mr->rkey, .addr = (uintptr_t)ring};
    struct peer_info next, prev;
    full(nfd, &mine_next, sizeof mine_next, 1);
    full(pfd, &mine_prev, sizeof mine_prev, 1);
    full(nfd, &next, sizeof next, 0);
    full(pfd, &prev, sizeof prev, 0);
    to_rts(to_next, next.lid, next.qpn);
    to_rts(from_prev, prev.lid, prev.qpn);
    // Both sides are ready before anything is sent.
    char go = 'g';
    full(nfd, &go, 1, 1);
    full(pfd, &go, 1, 1);
    full(nfd, &go, 1, 0);
    full(pfd, &go, 1, 0);
    close(nfd);
    close(pfd);
    close(lfd);
    int prev_rank = (rank + ranks - 1) % ranks;
    printf("READY rank %d pid %d\n", rank, getpid());
    fflush(stdout);

    uint32_t sent = 0, received = 0, credits = SLOTS, expect = 0, failures = 0;
    uint64_t sum = 0;
    struct timespec last = {0};
    while (sent < blocks || received < blocks) {
        if (sent < blocks && credits > 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            long since = (now.tv_sec - last.tv_sec) * 1000000 + (now.tv_nsec - last.tv_nsec) / 1000;
            if (since >= gap) {
                uint8_t *b = src + (sent % SLOTS) * BLOCK;
                fill_block(b, rank, sent);
                struct ibv_sge sge = {.addr = (uintptr_t)b, .length = BLOCK, .lkey = src_mr->lkey};
                struct ibv_send_wr wr = {.wr_id = sent, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE_WITH_IMM,
                                         .send_flags = IBV_SEND_SIGNALED, .imm_data = htonl(sent)}, *bad;
                wr.wr.rdma.remote_addr = next.addr + (sent % SLOTS) * BLOCK;
                wr.wr.rdma.rkey = next.rkey;
                if (ibv_post_send(to_next, &wr, &bad)) die("posting a write");
                sent++;
                credits--;
                last = now;
            }
        }
        struct ibv_wc wc[16];
        int n = ibv_poll_cq(cq, 16, wc);
        if (n < 0) die("polling");
        for (int i = 0; i < n; i++) {
            if (wc[i].status != IBV_WC_SUCCESS) {
                fprintf(stderr, "rank %d: completion %s for wr %llu\n", rank, ibv_wc_status_str(wc[i].status), (unsigned long long)wc[i].wr_id);
                failures++;
                goto done;
            }
            if (wc[i].opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
                uint32_t seq = ntohl(wc[i].imm_data);
                uint8_t *b = ring + (seq % SLOTS) * BLOCK;
                uint64_t s;
                memcpy(&s, b + BLOCK - 8, 8);
                if (seq != expect || wc[i].qp_num != from_prev->qp_num || s != block_sum(b, BLOCK - 8)) failures++;
                expect = seq + 1;
                sum += s;
                received++;
                credit_out[seq % 1024] = seq;
                struct ibv_sge sge = {.addr = (uintptr_t)&credit_out[seq % 1024], .length = 4, .lkey = cout_mr->lkey};
                struct ibv_send_wr wr = {.wr_id = 1ull << 40 | seq, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND_WITH_IMM,
                                         .send_flags = IBV_SEND_SIGNALED, .imm_data = htonl(seq)}, *bad;
                if (ibv_post_send(from_prev, &wr, &bad)) die("posting a credit");
            } else if (wc[i].opcode == IBV_WC_RECV) {
                if (wc[i].qp_num != to_next->qp_num) failures++;
                credits++;
            }
            if (wc[i].opcode & IBV_WC_RECV) {
                struct ibv_sge sge = {.addr = (uintptr_t)&credit_in[wc[i].wr_id], .length = 4, .lkey = cin_mr->lkey};
                struct ibv_recv_wr wr = {.wr_id = wc[i].wr_id, .sg_list = &sge, .num_sge = 1}, *bad;
                if (ibv_post_srq_recv(srq, &wr, &bad)) die("posting a receive");
            }
        }
    }
    // The last credits sent must be delivered before this rank's QPs go away.
    usleep(200000);
done:;
    FILE *f = fopen(out, "w");
    if (!f) die("writing the result");
    // What the previous rank sent, computed again here.
    uint64_t want = 0;
    uint8_t *scratch = malloc(BLOCK);
    for (uint32_t i = 0; i < received && scratch; i++) {
        fill_block(scratch, prev_rank, i);
        uint64_t s;
        memcpy(&s, scratch + BLOCK - 8, 8);
        want += s;
    }
    free(scratch);
    if (sum != want) failures++;
    if (failures || received != blocks) fprintf(f, "FAIL rank %d blocks=%u failures=%u\n", rank, received, failures);
    else fprintf(f, "OK rank %d blocks=%u sum=%llu\n", rank, received, (unsigned long long)sum);
    fclose(f);
    return failures || received != blocks ? 1 : 0;
}
