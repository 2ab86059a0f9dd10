import Foundation
import Glibc
import WBNet
import WBTrace

/// What an fd is, decided from /proc before the process is touched.
struct FDPlan {
    var fd: Int32
    var link: String
    var kind: FDState.Kind?
    /// Why wb cannot restore it, when it cannot.
    var unsupported: String?
    /// For a Unix socket: what sock_diag told of it (type, peer).
    var socket: UnixSocketInfo?
}

struct Preflight {
    var threads: Int
    var fds: [FDPlan]
    /// TCP connections among the fds (held while they are read).
    var connections = 0
    /// The sockets as sock_diag showed them, when the preflight ran with the process
    /// stopped (the capture uses them rather than asking again).
    var socketTable: SocketTable?
    /// Its TCP listeners: fd and port.
    var listeners: [(fd: Int32, port: UInt16)] = []
    /// Its TCP sockets in the middle of a connect.
    var connecting: [Int32] = []
}

/// What a checkpoint of a process tree knows about all of it, for each member's preflight.
struct TreeScope {
    /// Every process of the tree.
    var members: Set<Int32>
    /// Unix sockets any member holds (inode).
    var sockets: Set<UInt64>
    /// Pseudo-terminal pairs whose master a member holds (their numbers).
    var ptys: Set<Int32> = []
    init(members: Set<Int32>, sockets: Set<UInt64>) {
        self.members = members; self.sockets = sockets
        ptys = PseudoTerminals.masters(heldBy: members)
    }
}

extension Checkpointer {
    /// Refuses what no checkpoint can take, whatever the process holds: no such process, a
    /// thread, a zombie, a process another tracer has (unless `tracedByWB`), wb itself, a kernel
    /// thread or a process wb may not look at. Returns its /proc status.
    static func refuseOutright(_ pid: Int32, tracedByWB: Bool) throws -> [String: String] {
        guard ProcFS.exists(pid) else {
            throw WBError.invalidArgument("no process with pid \(pid)")
        }
        let status = try ProcFS.status(pid)
        if let tgid = status["Tgid"], tgid != "\(pid)" {
            throw WBError.invalidArgument("\(pid) is a thread of process \(tgid); checkpoint the process: wb checkpoint \(tgid)")
        }
        let state = status["State"] ?? ""
        if state.hasPrefix("Z") || state.hasPrefix("X") {
            throw WBError.invalidArgument("pid \(pid) has already exited (it is a zombie)")
        }
        if let tracer = status["TracerPid"], tracer != "0", !tracedByWB {
            throw ProcFS.tracedRefusal(pid, tracer: tracer)
        }
        if pid == getpid() { throw WBError.invalidArgument("wb cannot checkpoint itself") }
        try refuseUnreadable(pid)
        return status
    }

    /// Refuses a kernel thread (no program to checkpoint) and a process wb may not look at.
    private static func refuseUnreadable(_ pid: Int32) throws {
        do {
            _ = try Paths.readLink("/proc/\(pid)/exe")
        } catch WBError.system(_, let e, _) where e == EACCES || e == EPERM {
            let fix = getuid() == 0
                ? "it is in a user namespace above wb's, or a security module (Yama, SELinux, AppArmor) denies it"
                : "run wb as root or as the process's owner"
            throw WBError.refused("pid \(pid) does not let wb look at it (reading /proc/\(pid)/exe: permission denied): \(fix)")
        } catch {
            throw WBError.refused("pid \(pid) is a kernel thread (it has no program, no /proc/\(pid)/exe): there is nothing of it to checkpoint")
        }
    }

    /// Looks at the process through /proc only and refuses, before touching it, what the
    /// image cannot hold.
    func preflight() throws -> Preflight {
        let status = try Checkpointer.refuseOutright(pid, tracedByWB: held != nil || attached != nil)
        if jobStopped == nil { jobStopped = status["State"]?.hasPrefix("T") == true }
        // Memory shared with a parent outside the checkpoint (a vfork child before its exec,
        // a child cloned with CLONE_VM) comes back as this process's own.
        if let parent = status["PPid"].flatMap({ Int32($0) }), parent > 1, !(tree?.members.contains(parent) ?? false),
           Tracee.shareMemory(pid, parent) {
            let note = "pid \(pid) shares its memory with its parent \(parent) (a vfork child before its exec, or a child cloned with CLONE_VM): the image holds that memory as its own, and the restored process does not share it"
            if !notes.contains(note) { notes.append(note) }
        }
        // A thread in seccomp strict mode is killed by the first system call wb would make
        // in it: refuse before touching anything.
        for tid in (try? ProcFS.tasks(pid)) ?? [] where (try? ProcFS.status(pid, thread: tid))?["Seccomp"] == "1" {
            throw WBError.refused("pid \(pid) cannot be checkpointed: thread \(tid) is in seccomp strict mode (it may only read, write and exit; any other call, such as those wb makes to read its state, kills it). Nothing was changed")
        }
        // Memory no other process may read (memfd_secret): it could not be copied.
        if let maps = try? Paths.readText("/proc/\(pid)/maps"), let line = maps.split(separator: "\n").first(where: { $0.hasSuffix(" /secretmem (deleted)") }) {
            throw WBError.refused("pid \(pid) cannot be checkpointed: it holds secret memory (memfd_secret, \(line.split(separator: " ").first ?? "")), whose pages the kernel lets no other process read, so no checkpoint can copy them. Nothing was changed")
        }
        var problems: [String] = []
        // In a tree still running (its memory copied before the final stop), a child born
        // since the tree was listed is not refused: the final stop takes it in.
        let children = tree != nil && held == nil ? [] : ProcFS.children(pid).filter { !(tree?.members.contains($0) ?? false) }
        if !children.isEmpty {
            let list = children.prefix(5).map(String.init).joined(separator: ", ")
            problems.append("it has child process\(children.count > 1 ? "es" : "") \(list) (checkpoint them with it: wb checkpoint --tree \(pid))")
        }
        var fds: [FDPlan] = []
        let pid = self.pid
        let numbers = try ProcFS.fds(pid)
        // Each fd's link and (for a socket) a copy of it, on every core: a server's thousand
        // connections are looked at while it is stopped.
        let links: [(Int32, String)] = try Parallel.map(numbers.count) { i in
            (numbers[i], (try? Paths.readLink("/proc/\(pid)/fd/\(numbers[i])")) ?? "")
        }.filter { !$0.1.isEmpty }
        stamp("preflight: fds listed")
        // Unix socket pairs are kept as pairs when both ends are held by the process (or its
        // tree); every other socket is looked at through sock_diag and a copy of it.
        var scope = SocketProbe.Scope(held: tree?.sockets ?? [], table: SocketTable())
        let socketLinks = links.compactMap { Checkpointer.socketInode($0.1) }
        let stopped = held != nil
        if !socketLinks.isEmpty {
            // Stopped, only Unix sockets are listed again: TCP and UDP sockets are read one by
            // one through their copies (listing a busy host's takes longer).
            scope.table = try withContext("listing sockets (sock_diag)") { try SocketTable.read(inet: !stopped) }
            scope.held.formUnion(socketLinks)
            scope.embryos = SocketProbe.embryos(of: scope.held, table: scope.table)
            stamp("preflight: sockets listed")
        }
        if processHandle == nil && !socketLinks.isEmpty { processHandle = try ProcessHandle(pid: pid) }
        let handle = processHandle
        // Stopped after a preflight that ran, a socket other than a Unix one that the same
        // fd still holds (same inode) is what it was then: what may have changed (a connect
        // begun, a connection come in) is checked as it is read.
        let earlier = stopped ? earlierPlans : [:]
        let classified = try Parallel.map(links.count) { i -> (FDPlan, FileDescriptor?) in
            let (fd, link) = links[i]
            if let inode = Checkpointer.socketInode(link), let e = earlier[fd], e.link == link, e.kind == .socket,
               e.unsupported == nil, scope.table.unix[inode] == nil {
                return (e, nil)
            }
            let copy = Checkpointer.socketInode(link) != nil ? try? handle?.take(fd) : nil
            return (classify(fd: fd, link: link, scope: scope, copy: copy), copy)
        }
        stamp("preflight: fds classified")
        for (plan, copy) in classified {
            if let why = plan.unsupported { problems.append("fd \(plan.fd) is \(why)") }
            if let copy, stopped { socketCopies[plan.fd] = (copy, plan.link) }
            fds.append(plan)
        }
        problems += ipcProblems
        if !problems.isEmpty {
            if options.allowUnsupported {
                for p in problems { notes.append("left out: \(p)") }
                for plan in fds where plan.unsupported != nil { placeholders[plan.fd] = plan.unsupported! }
            } else {
                throw WBError.refused("pid \(pid) cannot be checkpointed: \(problems.joined(separator: "; ")). Nothing was changed; --allow-unsupported stores such fds as placeholders and leaves children out")
            }
        }
        // A copy held while the process runs would keep a socket it closes open (a listener
        // it closes and binds again): copies live only while it is stopped.
        if !stopped {
            if socketLinks.count >= 32 { _ = lockedFiles }
            socketCopies = [:]
            earlierPlans = Dictionary(fds.map { ($0.fd, $0) }, uniquingKeysWith: { a, _ in a })
        }
        let threads = (try? ProcFS.tasks(pid).count) ?? 1
        let connections = fds.filter { f in
            f.kind == .socket && Checkpointer.socketInode(f.link).flatMap { scope.table.inet[$0] }.map {
                $0.proto == Int32(IPPROTO_TCP) && [1, 4, 5, 8, 9, 11].contains($0.state) } == true
        }.count
        let listeners = fds.compactMap { f -> (fd: Int32, port: UInt16)? in
            guard f.kind == .socket, let d = Checkpointer.socketInode(f.link).flatMap({ scope.table.inet[$0] }),
                  d.proto == Int32(IPPROTO_TCP), d.state == 10 else { return nil }
            return (f.fd, d.local.port)
        }
        let connecting = fds.filter { f in
            f.kind == .socket && Checkpointer.socketInode(f.link).flatMap { scope.table.inet[$0] }.map {
                $0.proto == Int32(IPPROTO_TCP) && ($0.state == 2 || $0.state == 3) } == true
        }.map(\.fd)
        return Preflight(threads: threads, fds: fds, connections: connections, socketTable: stopped && !socketLinks.isEmpty ? scope.table : nil,
                         listeners: listeners, connecting: connecting)
    }

    /// A System V key as ipcs shows it.
    static func ipcKey(_ key: Int32) -> String { String(format: "0x%08x", UInt32(bitPattern: key)) }

    /// The inode of a "socket:[N]" fd link.
    static func socketInode(_ link: String) -> UInt64? {
        link.hasPrefix("socket:[") ? UInt64(link.dropFirst(8).dropLast()) : nil
    }

    /// What fd `fd` (linking to `link`) is; `copy` is wb's copy of it when it is a socket.
    /// Looks only: called for many fds at once.
    func classify(fd: Int32, link: String, scope: SocketProbe.Scope = SocketProbe.Scope(held: [], table: SocketTable()),
                  copy: FileDescriptor? = nil) -> FDPlan {
        var plan = FDPlan(fd: fd, link: link)
        if let inode = Checkpointer.socketInode(link) {
            classifySocket(&plan, inode: inode, scope: scope, copy: copy)
            return plan
        }
        if link.hasPrefix("pipe:") { plan.kind = .pipe; return plan }
        if link.hasPrefix("anon_inode:") {
            let what = link.dropFirst("anon_inode:".count).trimming("[]")
            let supported: [String: FDState.Kind] = ["eventfd": .eventfd, "timerfd": .timerfd, "signalfd": .signalfd, "eventpoll": .epoll,
                                                     "inotify": .inotify, "fanotify": .fanotify]
            if let kind = supported[what] { plan.kind = kind; return plan }
            if what == "pidfd" {
                // A pidfd comes back pointing at the same process only if that one comes back too.
                let info = ProcFS.parseFDInfo((try? Paths.readText("/proc/\(pid)/fdinfo/\(fd)")) ?? "")
                let target = Int32(info.extra["Pid"] ?? "") ?? -1
                if target <= 0 { plan.unsupported = "a pidfd of a process that has exited (\(link))"; return plan }
                if target != pid && !(tree?.members.contains(target) ?? false) {
                    plan.unsupported = "a pidfd of pid \(target), which is not part of the checkpoint (\(link))"
                    return plan
                }
                plan.kind = .pidfd
                return plan
            }
            let names = ["eventpoll": "an epoll instance", "inotify": "an inotify instance", "eventfd": "an eventfd",
                         "timerfd": "a timerfd", "signalfd": "a signalfd", "pidfd": "a pidfd",
                         "io_uring": "an io_uring instance", "userfaultfd": "a userfaultfd", "fanotify": "a fanotify instance"]
            plan.unsupported = "\(names[what] ?? "an anonymous inode (\(what))") (\(link))"
            return plan
        }
        if link.hasPrefix("/"), Filesystems.magic("/proc/\(pid)/fd/\(fd)") == Filesystems.mqueue {
            // A POSIX message queue's path is its name on the mqueue filesystem, not a file.
            plan.kind = .mqueue
            if let status = try? MessageQueues.status("/proc/\(pid)/fd/\(fd)"), status.notifyPid != 0 {
                plan.unsupported = "a POSIX message queue (\(link)) with a notification registered by pid \(status.notifyPid) (mq_notify), which wb cannot read back"
            }
            return plan
        }
        if link.hasPrefix("/memfd:") { plan.kind = .deletedFile; return plan }
        if link.hasSuffix(" (deleted)") {
            // What was deleted decides how it is read: a FIFO's buffer is peeked (reading it
            // to its end would wait for a writer that may never come), a device or directory
            // has no contents to store.
            let st = try? Paths.stat("/proc/\(pid)/fd/\(fd)")
            if st?.isFIFO == true { plan.kind = .fifo; return plan }
            if st?.isCharDevice == true || st.map({ $0.mode & S_IFMT == S_IFBLK }) == true {
                plan.unsupported = "a device node that was deleted (\(link))"
                return plan
            }
            // A removed directory is empty: made again and removed by restore.
            if st?.isDirectory == true { plan.kind = .file; return plan }
            plan.kind = .deletedFile
            return plan
        }
        guard link.hasPrefix("/") else { plan.unsupported = "of an unknown kind (\(link))"; return plan }
        guard let st = try? Paths.stat("/proc/\(pid)/fd/\(fd)") else { plan.kind = .file; return plan }
        if st.isFIFO { plan.kind = .fifo; return plan }
        if st.isCharDevice {
            // A pseudo-terminal pair whose master is in the checkpoint comes back as a pair;
            // a terminal whose other side is outside is the restoring terminal.
            if PseudoTerminals.isMaster(link) { plan.kind = .ptyMaster; return plan }
            if let n = PseudoTerminals.index(of: link), (tree?.ptys ?? ownPtys).contains(n) { plan.kind = .ptySlave; return plan }
            if link.hasPrefix("/dev/pts/") || link.hasPrefix("/dev/tty") || link == "/dev/console" {
                plan.kind = .tty
            } else if let why = Checkpointer.kernelStateDevice(link) {
                plan.unsupported = why
            } else {
                plan.kind = .device
            }
            return plan
        }
        if st.mode & S_IFMT == S_IFBLK { plan.unsupported = "a block device (\(link))"; return plan }
        plan.kind = .file
        return plan
    }

    /// Why a device whose open file carries state in the kernel (which opening it again does
    /// not bring back) cannot be checkpointed, or nil for a device that can be reopened.
    static func kernelStateDevice(_ path: String) -> String? {
        if path.hasPrefix("/dev/infiniband/") {
            return "an InfiniBand device (\(path)) whose verbs state (queue pairs, memory regions, completions) lives in the kernel and the HCA; start the program with `wb run --ib`, whose verbs layer keeps that state in the process"
        }
        let stateful: [(String, String)] = [("/dev/kvm", "a KVM virtual machine"), ("/dev/vfio/", "a VFIO device"), ("/dev/fuse", "a FUSE connection"),
                                            ("/dev/net/tun", "a TUN/TAP interface"), ("/dev/uinput", "a uinput device"), ("/dev/dri/", "a GPU (DRM) context")]
        for (prefix, what) in stateful where path == prefix || path.hasPrefix(prefix) {
            return "\(what) (\(path)) whose state lives in the kernel; opening it again would not bring it back"
        }
        return nil
    }
}
