// harness-namespaces
//
// Runs in a UTS namespace of its own with host name "wb-restored-host" and domain name
// "wb.example", and in a mount namespace of its own. Prints "READY pid=N"; each SIGUSR1 is
// answered with "VERIFY OK" when uname still gives both names and the UTS namespace is not
// its parent's, else "VERIFY FAIL <what>".
#define _GNU_SOURCE
#include "harness.h"
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

int main(void) {
    harness_require(unshare(CLONE_NEWUTS | CLONE_NEWNS) == 0, "unshare (needs CAP_SYS_ADMIN)");
    harness_require(sethostname("wb-restored-host", 16) == 0 && setdomainname("wb.example", 10) == 0, "names");
    harness_verify_requests();
    harness_say("READY pid=%d", getpid());
    for (;;) {
        harness_wait_for_request();
        char failures[256] = "";
        struct utsname u;
        if (uname(&u) != 0 || strcmp(u.nodename, "wb-restored-host") != 0) strcat(failures, " hostname");
        if (strcmp(u.domainname, "wb.example") != 0) strcat(failures, " domainname");
        char mine[64] = "", theirs[64] = "", path[64];
        snprintf(path, sizeof path, "/proc/%d/ns/uts", getppid());
        readlink("/proc/self/ns/uts", mine, sizeof mine - 1);
        readlink(path, theirs, sizeof theirs - 1);
        if (strcmp(mine, theirs) == 0) strcat(failures, " shared-uts");
        if (failures[0]) harness_say("VERIFY FAIL%s", failures);
        else harness_say("VERIFY OK");
    }
}
