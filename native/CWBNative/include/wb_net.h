// Sockets seen from wb's side: a copy of a process's socket (pidfd_getfd) is the same socket,
// so wb reads and sets its state with ordinary calls on the copy. TCP connections are read and
// rebuilt in repair mode (TCP_REPAIR), which keeps the kernel from sending anything for them.
#ifndef WB_NET_H
#define WB_NET_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// What repair mode tells of an established connection. Sequence numbers are those of the
/// byte after the last one queued: `snd_seq` after the send queue (sent or not), `rcv_seq`
/// after the receive queue (the next byte expected).
typedef struct {
    uint32_t state;                 // TCP_ESTABLISHED (1), ...
    uint32_t snd_seq, rcv_seq;
    uint32_t outq, unsent, inq;     // send queue bytes (not acknowledged), of them not sent, receive queue bytes
    uint32_t mss;
    uint32_t options;               // TCPI_OPT_TIMESTAMPS 1, _SACK 2, _WSCALE 4
    uint32_t snd_wscale, rcv_wscale;
    uint32_t timestamp;
    uint32_t snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup;
} wb_tcp_conn;

/// A TCP socket's state from TCP_INFO (any socket, bound or not, which sock_diag may not
/// list); for a listener, the connections waiting to be accepted and the backlog. 0 or errno.
int wb_tcp_state(int fd, uint32_t *state, uint32_t *waiting, uint32_t *backlog);
/// setsockopt(TCP_REPAIR): 1 on, 0 off, -1 off without a window probe. 0 or an errno.
int wb_tcp_repair(int fd, int mode);
/// Reads an established connection's numbers; the socket is in repair mode. 0 or an errno.
int wb_tcp_read(int fd, wb_tcp_conn *c);
/// Copies `len` bytes of a queue (1: receive, 2: send) without taking them; the socket is in
/// repair mode. 0 or an errno (EAGAIN when fewer bytes were there).
int wb_tcp_peek(int fd, int queue, void *buf, size_t len);
/// Before bind and connect of a socket in repair mode: the queues' first sequence numbers.
int wb_tcp_prepare(int fd, const wb_tcp_conn *c);
/// After connect in repair mode: options, timestamp, the receive queue's bytes and the
/// window. The send queue is wb_tcp_load_sent's.
int wb_tcp_finish(int fd, const wb_tcp_conn *c, const void *recvq);

/// In repair mode, after wb_tcp_finish: `len` bytes into the send queue, as sent (the
/// retransmission timer, armed as they go in, sends them again). 0 or an errno.
int wb_tcp_load_sent(int fd, const void *bytes, size_t len);

/// SIOCINQ/SIOCOUTQ/SIOCOUTQNSD and the like: an int out of a socket ioctl.
int wb_socket_ioctl_int(int fd, unsigned long request, int *value);

/// One TCP/UDP socket of this network namespace as inet_diag reports it.
typedef struct {
    uint64_t inode;
    uint32_t state;         // TCP state (UDP: 7 unconnected, 1 connected)
    uint32_t rqueue;        // listener: connections waiting to be accepted; else bytes to read
    uint32_t wqueue;        // listener: backlog; else bytes to send
    uint32_t shutdown;      // 1 reading, 2 writing
    uint8_t src[16], dst[16];   // addresses (IPv4 in the first 4 bytes), network order
    uint16_t sport, dport;      // ports, host order
    uint8_t family;
} wb_inet_socket;

/// Every socket of `family` (AF_INET, AF_INET6) and `protocol` (IPPROTO_TCP, IPPROTO_UDP) in
/// wb's network namespace. Writes up to `cap`, the number there are to `count`.
int wb_inet_sockets(int family, int protocol, wb_inet_socket *out, int cap, int *count);

/// One datagram peeked at `offset` bytes into a socket's queue (SO_PEEK_OFF): its bytes (up
/// to `cap`; `*len` is its real length), and the sender's address. 0, EAGAIN at the end.
int wb_peek_datagram(int fd, int offset, void *buf, size_t cap, size_t *len, void *from, uint32_t *fromlen);

/// Sends a UDP datagram that looks as if it came from `from` (an IPv4 or IPv6 address and
/// port) to `to`, through a raw socket of wb's network namespace, marked with `mark` (0: none) so that
/// a hold on the host's traffic lets it through. 0 or an errno.
int wb_udp_inject(const void *from, uint32_t fromlen, const void *to, uint32_t tolen, const void *data, size_t len, uint32_t mark);

/// The classic BPF program attached to a socket (SO_GET_FILTER): up to `cap` 8-byte
/// instructions into `out`, their number into `count` (0: none). 0 or an errno.
int wb_socket_filter(int fd, uint64_t *out, int cap, int *count);
/// Attaches a classic BPF program (SO_ATTACH_FILTER).
int wb_socket_attach_filter(int fd, const uint64_t *code, int count);

/// Whether libnftables can be loaded (dlopen "libnftables.so.1", the library nft is built on).
int wb_nft_available(void);
/// Runs nft commands (as `nft -f` reads them) in this process: 0, ENOSYS without libnftables,
/// or EINVAL with nft's message in `error`.
int wb_nft_run(const char *commands, char *error, size_t cap);

/// Adds `count` elements (`key_len` bytes each, at `keys`) to set `set` of nftables table
/// `table` (family inet) in one netlink batch. 0 or an errno (the caller falls back to nft
/// text).
int wb_nft_add_elements(const char *table, const char *set, const uint8_t *keys, size_t key_len, int count);

/// Whether socket `fd` (of `family`) has joined multicast `group` (4 or 16 bytes, network
/// order) on interface `ifindex` (getsockopt MCAST_MSFILTER): 0 and its filter (`exclude`:
/// every source but those listed, else only those), up to `cap` sources into `sources`
/// (4 or 16 bytes each) and their number into `count`; EADDRNOTAVAIL when it has not.
int wb_mcast_filter(int fd, int family, uint32_t ifindex, const uint8_t *group, int *exclude, uint8_t *sources, int cap, int *count);
/// Joins `group` on `ifindex` again with that filter (MCAST_JOIN_GROUP and MCAST_BLOCK_SOURCE,
/// or MCAST_JOIN_SOURCE_GROUP for each source). 0 or an errno.
int wb_mcast_join(int fd, int family, uint32_t ifindex, const uint8_t *group, int exclude, const uint8_t *sources, int count);

/// setns(fd, CLONE_NEWNET) of the calling thread: it joins the network namespace `fd` names.
/// 0 or -1 with errno.
int wb_setns_net(int fd);

/// getsockname (peer 0) or getpeername (peer 1) into buf (*len: its size in, the name's out).
int wb_sock_name(int fd, int peer, uint8_t *buf, uint32_t *len);
/// Whether fd is a listening socket (SO_ACCEPTCONN).
int wb_sock_listening(int fd);
/// connect(2) to a raw sockaddr; 0 or an errno (EINPROGRESS for a non-blocking socket).
int wb_connect_raw(int fd, const uint8_t *addr, uint32_t len);
/// Closes a socket with a reset (SO_LINGER 0).
int wb_close_reset(int fd);
/// Accepts and resets every connection waiting on listener (a non-blocking copy); how many.
int wb_accept_drop(int listener);

/// Starts the guard of held connections: a process of its own session that is told, over
/// `*control` (wb_net_guard_send), which sockets are in repair mode, as (pid, fd) pairs, and
/// when wb goes away without saying it is done, takes each from its process (pidfd_getfd),
/// turns repair mode off and deletes the nftables table `table` (inet) with `nft` -- unless
/// `keep_if_gone` (a checkpoint with --kill) and every process of `targets` has ended: the
/// connections then stay held for the restore. Returns its pid, or -errno.
pid_t wb_net_guard_start(const char *nft, const char *table, const pid_t *targets, int ntargets, int keep_if_gone, int *control);
/// Tells the guard of `n` more held sockets (`pairs`: pid, fd, ...) and then `what`: 'a' more
/// to come, 'd' done (it exits and leaves everything), 'l' let go now (as if wb were gone with
/// its targets alive).
int wb_net_guard_send(int control, char what, const int32_t *pairs, int n);

/// Sends one TCP segment with no data from `from` to `to` (struct sockaddr_in or _in6, the
/// same family) with `flags` (FIN 0x01, RST 0x04, ACK 0x10), through a raw socket of wb's
/// network namespace marked `mark` (the held connections' packet filter lets marked packets
/// through): a FIN the peer had sent, put back into a socket rebuilt in repair mode, or the
/// reset of --tcp=close. 0 or an errno.
int wb_tcp_inject(const void *from, const void *to, uint32_t seq, uint32_t ack, uint16_t window, uint8_t flags, uint32_t mark);

/// Destroys the TCP socket of this network namespace with these addresses (struct
/// sockaddr_in or _in6 of one family), whatever its state, an orphan or TIME-WAIT included
/// (sock_diag SOCK_DESTROY): 0, ENOENT when there is none, or an errno.
int wb_tcp_destroy(const void *local, const void *peer);

/// The inodes of the connections waiting in the accept queue of Unix listener `inode`
/// (sock_diag UDIAG_SHOW_ICONS). Writes up to `cap`, the number there are to `count`.
int wb_unix_listener_queue(uint64_t inode, uint64_t *out, int cap, int *count);

#ifdef __cplusplus
}
#endif
#endif
