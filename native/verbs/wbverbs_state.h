// What libwbverbs.so tells a checkpoint about the verbs objects of its process: a page-aligned
// area of the library's zero-filled data holding a header and one record per object, kept
// current as objects are created, changed and destroyed and as work is posted and completed.
// wb finds it in an image by the magic at a page start of a writable mapping of the library
// and reads it from the image's memory (Sources/WBVerbs/VerbsState.swift decodes this
// layout; little-endian, no padding).
#ifndef WBVERBS_STATE_H
#define WBVERBS_STATE_H
#include <stdint.h>

#define WB_STATE_MAGIC "WBVERBS1"
#define WB_STATE_RECORDS 4096

enum { WB_REC_FREE = 0, WB_REC_PD, WB_REC_MR, WB_REC_CQ, WB_REC_QP, WB_REC_SRQ, WB_REC_AH };

struct wb_state_header {        // 320 bytes
    char magic[8];              // WB_STATE_MAGIC
    uint32_t version;           // 1
    uint32_t capacity;          // records the mapping has room for
    uint32_t used;              // records in use or freed (free ones have kind 0)
    uint16_t lid;
    uint16_t tcp_port;
    uint16_t udp_port;
    uint16_t pad;
    uint32_t overflow;          // objects that found no record
    char device[16];            // "wbsoft0"
    char reserved[16];
    char fabric[256];           // the fabric directory
};

struct wb_state_record {        // 64 bytes
    uint8_t kind;               // WB_REC_*
    uint8_t type;               // QP: enum ibv_qp_type
    uint8_t state;              // QP: enum ibv_qp_state
    uint8_t pad;
    uint32_t id;                // QP: its number; MR: lkey; others: handle
    uint64_t addr;              // MR: start address
    uint64_t length;            // MR: bytes
    uint32_t key;               // MR: rkey; QP: the peer's QP number; UD QP: Q_Key
    uint32_t access;            // MR: access flags
    uint16_t peer_lid;          // QP (RC, UC)
    uint16_t pad2;
    uint32_t sends;             // QP: sends posted and not completed (RC: not acknowledged)
    uint32_t recvs;             // QP, SRQ: receives posted
    uint32_t held;              // QP: requests received that wait for a receive (RNR)
    uint32_t completions;       // CQ: completions waiting to be polled
    uint32_t pd;                // MR, QP, SRQ, AH: the PD's handle
    uint32_t cqe;               // CQ: its size as created
    uint32_t reserved;
};

#endif
