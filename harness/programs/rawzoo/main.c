// harness-rawzoo
//
// Holds the sockets below the transport layer and checks them after a restore: a netlink
// route socket bound with a port id of its own and multicast groups (RTMGRP_LINK, joined at
// bind, and RTNLGRP_IPV4_IFADDR, joined with NETLINK_ADD_MEMBERSHIP), a netlink socket
// bound by the kernel (port id 0 asked), an ICMP raw socket bound to 127.0.0.1, a packet
// socket bound to lo, and a UDP socket that joined multicast group 239.7.7.7 on lo. Prints
// "READY pid=N" and answers each SIGUSR1 with "VERIFY OK" or "VERIFY FAIL <what>": the
// netlink sockets keep their port ids and groups and still answer a request (RTM_GETLINK),
// the raw socket gets the echo reply to a ping of 127.0.0.1, the packet socket sees loopback
// traffic, and a datagram sent to the group reaches the UDP socket.
#define _GNU_SOURCE
#include "harness.h"
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char failures[1024];
static void fail(const char *what) { strcat(failures, " "); strcat(failures, what); }

static int readable(int fd, int ms) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, ms) == 1;
}

static uint32_t portid_of(int fd) {
    struct sockaddr_nl a;
    socklen_t l = sizeof a;
    memset(&a, 0, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    return a.nl_pid;
}

/// RTM_GETLINK of lo: a netlink socket that still talks to the kernel gets an answer.
static int asks_the_kernel(int fd) {
    struct { struct nlmsghdr h; struct ifinfomsg i; } req;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_len = sizeof req;
    req.h.nlmsg_type = RTM_GETLINK;
    req.h.nlmsg_flags = NLM_F_REQUEST;
    req.h.nlmsg_seq = 7;
    req.i.ifi_family = AF_UNSPEC;
    req.i.ifi_index = (int)if_nametoindex("lo");
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    if (sendto(fd, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) return 0;
    char buf[8192];
    while (readable(fd, 2000)) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return 0;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq == 7 && h->nlmsg_type == RTM_NEWLINK) return 1;
        }
    }
    return 0;
}

static uint16_t icmp_sum(const void *p, size_t len) {
    const uint8_t *b = p;
    uint32_t s = 0;
    for (size_t i = 0; i + 1 < len; i += 2) s += (uint32_t)(b[i] << 8 | b[i + 1]);
    if (len & 1) s += (uint32_t)(b[len - 1] << 8);
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return htons((uint16_t)~s);
}

int main(void) {
    // Netlink: a port id of its own and groups.
    int route = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    uint32_t chosen = 0x57620000u | (uint32_t)(getpid() & 0xffff);
    struct sockaddr_nl nl = { .nl_family = AF_NETLINK, .nl_pid = chosen, .nl_groups = RTMGRP_LINK };
    harness_require(route >= 0 && bind(route, (struct sockaddr *)&nl, sizeof nl) == 0, "bind netlink");
    int group = RTNLGRP_IPV4_IFADDR;
    harness_require(setsockopt(route, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof group) == 0, "NETLINK_ADD_MEMBERSHIP");
    int autobound = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    struct sockaddr_nl any = { .nl_family = AF_NETLINK };
    harness_require(autobound >= 0 && bind(autobound, (struct sockaddr *)&any, sizeof any) == 0, "bind netlink 0");
    uint32_t auto_id = portid_of(autobound);

    // ICMP raw socket bound to 127.0.0.1.
    int raw = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    struct sockaddr_in lo4 = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    harness_require(raw >= 0 && bind(raw, (struct sockaddr *)&lo4, sizeof lo4) == 0, "raw socket");

    // A packet socket on lo.
    int packet = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
    struct sockaddr_ll ll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP), .sll_ifindex = (int)if_nametoindex("lo") };
    harness_require(packet >= 0 && bind(packet, (struct sockaddr *)&ll, sizeof ll) == 0, "packet socket");

    // UDP in a multicast group on lo.
    int mcast = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in maddr = { .sin_family = AF_INET, .sin_port = htons(0) };
    harness_require(bind(mcast, (struct sockaddr *)&maddr, sizeof maddr) == 0, "bind multicast");
    socklen_t ml = sizeof maddr;
    getsockname(mcast, (struct sockaddr *)&maddr, &ml);
    struct ip_mreqn mreq = { .imr_multiaddr.s_addr = inet_addr("239.7.7.7"), .imr_ifindex = (int)if_nametoindex("lo") };
    harness_require(setsockopt(mcast, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof mreq) == 0, "IP_ADD_MEMBERSHIP");

    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        failures[0] = 0;
        // Netlink: ids, groups, and a conversation with the kernel.
        if (portid_of(route) != chosen) fail("netlink-portid");
        if (portid_of(autobound) != auto_id) fail("netlink-autobound-portid");
        uint32_t groups[4] = { 0 };
        socklen_t gl = sizeof groups;
        if (getsockopt(route, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, groups, &gl) != 0
            || !(groups[0] & (1u << (RTNLGRP_LINK - 1))) || !(groups[0] & (1u << (RTNLGRP_IPV4_IFADDR - 1)))) fail("netlink-groups");
        while (readable(route, 0)) { char b[8192]; if (recv(route, b, sizeof b, 0) <= 0) break; }
        if (!asks_the_kernel(route)) fail("netlink-request");
        if (!asks_the_kernel(autobound)) fail("netlink-autobound-request");
        // Raw ICMP: an echo request to 127.0.0.1 comes back.
        while (readable(raw, 0)) { char b[2048]; if (recv(raw, b, sizeof b, 0) <= 0) break; }
        struct icmphdr echo = { .type = ICMP_ECHO, .un.echo.id = htons(0x5762), .un.echo.sequence = htons(1) };
        echo.checksum = icmp_sum(&echo, sizeof echo);
        if (sendto(raw, &echo, sizeof echo, 0, (struct sockaddr *)&lo4, sizeof lo4) != sizeof echo) fail("raw-send");
        int replied = 0;
        while (!replied && readable(raw, 2000)) {
            char b[2048];
            ssize_t n = recv(raw, b, sizeof b, 0);
            if (n < 28) break;
            struct icmphdr *h = (struct icmphdr *)(b + 20);
            if (h->type == ICMP_ECHOREPLY && h->un.echo.id == htons(0x5762)) replied = 1;
        }
        if (!replied) fail("raw-echo");
        // The packet socket sees IP traffic on lo (the ping above, at least).
        if (!readable(packet, 2000)) fail("packet-traffic");
        struct sockaddr_ll got;
        socklen_t gll = sizeof got;
        if (getsockname(packet, (struct sockaddr *)&got, &gll) != 0 || got.sll_ifindex != (int)if_nametoindex("lo") || got.sll_protocol != htons(ETH_P_IP)) fail("packet-bound");
        // Multicast: a datagram to the group on lo arrives.
        int sender = socket(AF_INET, SOCK_DGRAM, 0);
        struct in_addr lo = { .s_addr = htonl(INADDR_LOOPBACK) };
        setsockopt(sender, IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo);
        struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = maddr.sin_port, .sin_addr.s_addr = inet_addr("239.7.7.7") };
        if (sendto(sender, "group", 5, 0, (struct sockaddr *)&to, sizeof to) != 5) fail("multicast-send");
        close(sender);
        char b[16] = "";
        if (!readable(mcast, 2000) || recv(mcast, b, sizeof b, 0) != 5 || memcmp(b, "group", 5)) fail("multicast-membership");
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
