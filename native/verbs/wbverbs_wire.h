// The wire protocol of wbsoft0, the emulated HCA of libwbverbs.so (host byte order: both
// ends are x86-64). An RC or UC QP opens one TCP connection to its peer's device and says
// which QP it is for (wb_hello); on it go the QP's requests, each a wb_hdr and its payload,
// and back come the responder's answers (RC only), in order. UD datagrams (a wb_hdr and its
// payload each) go over one connection per pair of devices whose hello names WB_UD_CHANNEL:
// reliable and ordered, so that a checkpoint holds them as it holds any TCP stream.
#ifndef WBVERBS_WIRE_H
#define WBVERBS_WIRE_H
#include <stdint.h>

#define WB_HELLO_MAGIC 0x77625631u  // "wbV1"
// The hello of a device's connection for UD datagrams (to any QP of the device it reaches).
#define WB_UD_CHANNEL 0xffffffffu

struct wb_hello {
    uint32_t magic;
    uint16_t src_lid;
    uint16_t pad;
    uint32_t src_qpn;
    uint32_t dst_qpn;
};

enum {
    WB_SEND = 1, WB_SEND_IMM, WB_WRITE, WB_WRITE_IMM, WB_READ, WB_CAS, WB_FADD,
    WB_ACK = 16, WB_READ_RESP, WB_ATOMIC_RESP,
};

// Request flags: the requester's RNR retry count, when it is finite (7 means for ever).
#define WB_FLAG_RNR_RETRY 0x07
#define WB_FLAG_RNR_FINITE 0x08
// The payload is not in the stream: the responder, on the same host, reads it from the
// requester's memory (process `b`, address `a`); for a READ, writes the data there, and
// answers with no payload.
#define WB_FLAG_PULL 0x10

struct wb_hdr {
    uint8_t op;
    uint8_t flags;     // requests: WB_FLAG_*
    uint16_t status;   // answers: an ibv_wc_status, 0 for success
    uint32_t imm;      // immediate data, as the application gave it
    uint64_t addr;     // RDMA and atomics: remote address; UD: destination QP number
    uint32_t rkey;     // RDMA and atomics: remote key; UD: Q_Key
    uint32_t len;      // payload bytes (READ: bytes asked for)
    uint64_t a;        // CAS: compare; FADD: add; atomic answer: the old value; ACK: how many
                       // requests it answers (successive ones are acknowledged together); UD: source LID
    uint64_t b;        // CAS: swap; UD: source QP number
};

#endif
