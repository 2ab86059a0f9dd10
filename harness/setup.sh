# Shared by harness/test, harness/demo and the benchmarks: install what is missing on a
# fresh Debian machine. Sourced, not run.
wb_need_packages() {
    # nftables and iproute2: wb holds TCP connections with an nftables table and sets up the
    # network namespace of `restore --new-netns`; the servers are the sockets tests' targets;
    # Slurm and munge run the `fuzz --slurm` test's private cluster, AFL++ its peer instance;
    # rdma-core's pingpongs, perftest and Open MPI are the verbs programs run on wb's emulated
    # device. python3-dbg: a python with debug symbols and its gdb commands (py-bt), debugged
    # from an image with the scripts the image carries. keyutils: a process with a session
    # keyring of its own.
    local wanted=(libunwind-dev libdw-dev libcapstone-dev libibverbs-dev libxxhash-dev liblzma-dev pkg-config gdb sqlite3
                  nftables iproute2 redis-server redis-tools memcached nginx-light curl jq libxml2-utils python3 python3-dbg keyutils
                  slurmctld slurmd slurm-client munge afl++ ibverbs-utils perftest openmpi-bin libopenmpi-dev)
    local missing=()
    for p in "${wanted[@]}" "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "wb: installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

wb_need_swift() {
    if ! command -v swift >/dev/null 2>&1; then
        if [ -x /opt/swift/usr/bin/swift ]; then
            export PATH="/opt/swift/usr/bin:$PATH"
        else
            echo "wb: Swift 6 is needed (swift.org/install); it is not on this machine" >&2
            exit 1
        fi
    fi
}

wb_root_check() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "wb: note: checkpointing other processes needs root (or CAP_SYS_PTRACE and CAP_CHECKPOINT_RESTORE)" >&2
    fi
}
