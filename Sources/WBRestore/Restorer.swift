import Foundation
import Glibc
import WBNet
import WBTrace

public struct RestoreOptions: Sendable {
    public enum PidNamespace: Sendable {
        /// Keep the original pids in this namespace when they are free, else a new namespace.
        case automatic
        /// Always a new pid namespace (--new-pidns).
        case new
    }
    public var pidNamespace = PidNamespace.automatic
    /// Check every section's checksum before restoring.
    public var verify = true
    /// Restore even if this CPU lacks features the process may use.
    public var force = false
    /// Map private anonymous page data straight from the image file (copy-on-write) instead
    /// of copying it: restore time no longer grows with memory size, but the image must stay
    /// in place while the process runs, and pages the process later discards with
    /// MADV_DONTNEED come back with their checkpointed contents instead of zeros.
    public var mapPages = false
    /// fds 1 and 2 go to /dev/null, whatever they were (copies restored to be examined,
    /// which must not write into the user's terminal or files).
    public var silenceOutput = false
    /// The process sees this machine's CLOCK_MONOTONIC and CLOCK_BOOTTIME (--host-clocks)
    /// instead of its own going on from where they were at the checkpoint.
    public var hostClocks = false
    /// For runs that take the process forward only to look at it (bisect, replays): a
    /// directory (of wb's) where the files it may write are copied; it gets the copies, so
    /// the user's real files are never written (PrivateFiles). Nil: the real files.
    public var privateFiles: String?
    /// Where files the image carries are unpacked when this machine lacks them.
    public var cacheDirectory = FileCache.defaultDirectory
    /// Restore every process of an image of a process tree (wb restore); other users of a
    /// restored process (debugging, fuzzing, replays) work on one process and refuse trees.
    public var allowTree = false
    /// TCP connections to peers outside the image: rebuilt (the peer sees a pause) or reset.
    public var tcp = TCPPolicy.restore
    /// Restore into a network namespace of the process's own, holding the addresses its
    /// sockets were bound to (a copy beside a running original keeps its ports). Its
    /// connections to peers outside the image are reset.
    public var newNetworkNamespace = false
    /// For copies restored to be examined (replays, bisect, fuzzing): when the image holds
    /// network sockets, restore into a network namespace of their own, as `newNetworkNamespace`
    /// does, so the copy never takes the original's ports or talks to its peers (as root;
    /// others restore in wb's namespace).
    public var isolateSockets = false
    /// Restore into this network namespace (a file such as /run/netns/NAME: a host of a set
    /// image restored on one box).
    public var networkNamespace: String?
    /// Connections to other members of a set ("LOCAL->PEER", addresses as the image has
    /// them): rebuilt with repair mode like connections inside the image, whatever the
    /// namespace.
    public var setChannels: Set<String> = []
    /// The caller holds the restored processes' traffic (a set's hold until every member is
    /// back): rebuilt connections stay in repair mode, where the kernel sends nothing for
    /// them, and are left to it (`RestoredProcess.connections`) to finish once it flows.
    public var trafficHeld = false
    public init() {}
}

/// A process rebuilt from an image, stopped under wb's control with every register set.
public final class RestoredProcess {
    public let tracee: Tracee
    /// The pid as wb sees it.
    public let pid: Int32
    /// The pid as the process sees itself (the original one).
    public let originalPid: Int32
    /// The init of the new pid namespace, if one was made.
    public let initPid: Int32?
    public let notes: [String]
    /// The other processes of a restored tree, parents first (pids as wb sees them).
    public let descendants: [Tracee]
    /// Rebuilt connections still in repair mode, left to a caller that holds the traffic
    /// (`RestoreOptions.trafficHeld`): `SocketBuilder.finish` them once the traffic flows.
    public internal(set) var connections: [SocketBuilder.Pending] = []

    init(tracee: Tracee, pid: Int32, originalPid: Int32, initPid: Int32?, notes: [String], descendants: [Tracee] = []) {
        self.tracee = tracee; self.pid = pid; self.originalPid = originalPid; self.initPid = initPid; self.notes = notes
        self.descendants = descendants
    }

    /// Processes (as wb sees them) that were stopped by a signal at the checkpoint.
    var jobStopped: Set<Int32> = []

    /// Lets the process (and a tree's other processes) run; those that were stopped by a
    /// signal at the checkpoint are let go stopped, as they were.
    public func resume() {
        for t in descendants.reversed() { jobStopped.contains(t.pid) ? t.detach(stopSignal: SIGSTOP) : t.detach() }
        jobStopped.contains(tracee.pid) ? tracee.detach(stopSignal: SIGSTOP) : tracee.detach()
        // The stop takes effect when each is next scheduled: whoever is told next finds them
        // stopped (at most a second).
        let deadline = Clock.monotonic + 1
        for pid in jobStopped {
            while Clock.monotonic < deadline {
                guard let state = try? ProcFS.status(pid)["State"], state.hasPrefix("R") || state.hasPrefix("S") || state.hasPrefix("D") else { break }
                usleep(200)
            }
        }
    }

    /// Lets go of the process but leaves it stopped (SIGSTOP): `kill -CONT` or a debugger
    /// continues it. Returns once the stop has taken effect (the signal is queued before the
    /// threads are let go, but they act on it only when next scheduled), so whoever is told
    /// next finds it stopped; at most a second.
    public func releaseStopped() {
        for t in descendants.reversed() { t.detach(stopSignal: SIGSTOP) }
        tracee.detach(stopSignal: SIGSTOP)
        let deadline = Clock.monotonic + 1
        while Clock.monotonic < deadline {
            guard let state = try? ProcFS.status(pid)["State"], state.hasPrefix("R") || state.hasPrefix("S") || state.hasPrefix("D") else { return }
            usleep(200)
        }
    }

    /// What the process is doing now, from /proc: "running" (or sleeping), "stopped", or
    /// "exited" (gone, or a zombie: it ended right after it was let go).
    public var state: String {
        guard let s = try? ProcFS.status(pid)["State"] else { return "exited" }
        if s.hasPrefix("T") || s.hasPrefix("t") { return "stopped" }
        if s.hasPrefix("Z") || s.hasPrefix("X") { return "exited" }
        return "running"
    }

    /// Kills the process and waits until it is gone. While wb still traces it, its threads'
    /// ends are collected first: a pid namespace's init cannot finish before they are.
    @discardableResult
    public func terminate() -> Int32 {
        for t in descendants { _ = kill(t.pid, SIGKILL) }
        _ = kill(initPid ?? pid, SIGKILL)
        if !tracee.isDetached {
            // Other threads first: a traced leader is reported only after every other thread.
            for tid in tracee.tids.filter({ $0 != tracee.pid }) + [tracee.pid] {
                while true {
                    guard let stop = try? tracee.wait(tid) else { break }
                    if case .exited = stop { break }
                    if case .killed = stop { break }
                }
            }
        }
        return (try? waitForExit()) ?? 128 + SIGKILL
    }

    /// Waits for the process to end (after `resume`); returns its exit code, or 128 + the
    /// signal that killed it.
    public func waitForExit() throws -> Int32 {
        let child = initPid ?? pid
        var status: Int32 = 0
        while true {
            if waitpid(child, &status, 0) >= 0 { break }
            if errno == EINTR { continue }
            throw WBError.system(call: "waitpid", errno: errno, what: "waiting for restored process \(pid)")
        }
        if WBExit.exited(status) { return WBExit.code(status) }
        return 128 + WBExit.signal(status)
    }
}

/// Rebuilds a process from an image inside a fresh stub: memory first, then files, process
/// state, threads, signals, and every thread's registers last.
public final class Restorer {
    public let image: Image
    public let options: RestoreOptions
    public var progress: (String) -> Void = { _ in }
    var notes: [String] = []
    /// The flags (F_GETFL, and O_CLOEXEC from F_GETFD) of each process's sockets, read back
    /// once its fds were built (by pid; processes are built in parallel).
    private var socketFlags: [Int32: [Int32: ProcFS.FDInfo]] = [:]
    private let socketFlagsLock = NSLock()
    /// Checks the page data as memory is copied (copying restores); nil when pages are not
    /// checked or are mapped.
    var pageVerifier: PageVerifier?
    /// The copies of the files the process may write, with `options.privateFiles`.
    private(set) var privateCopies: PrivateFiles?
    /// Where each mapped file came from on this machine (after `restore`).
    public private(set) var files: ResolvedFiles?
    /// Sockets are built from wb's side, in the restored processes' network namespace.
    var sockets = SocketBuilder(namespace: .current)
    /// Unix socket paths that were unlinked after their bind: removed (as the process that
    /// bound them) once every process has its fds.
    var unlinkLater: [(path: String, leader: RemoteSyscalls, scratch: Scratch, access: FileAccess)] = []
    /// TCP connections rebuilt in repair mode, finished once the restore has succeeded.
    var pendingConnections: [SocketBuilder.Pending] = []
    /// Rebuilt connections in repair mode, left to a caller that holds their traffic.
    var heldConnections: [SocketBuilder.Pending] = []
    /// The TCP connections open in wb's network namespace (SocketTable.connectionKey), read
    /// when the first connection is rebuilt in it.
    var openConnections: Set<String>?
    /// Processes of a tree forked from their rebuilt parents (Restorer+Tree), in the order
    /// they were forked, with their work areas (their copies of the parent's).
    var lateMembers: [(ProcessState, Tracee)] = []
    var lateWorkAreas: [Int32: UInt64] = [:]
    /// Whether the tree's processes run in a pid namespace of their own.
    var treeInNewNamespace = false
    /// The image was taken with --kill and its connections are still held (its hold exists).
    lazy var originalConnectionsHeld: Bool = image.metadata.networkLock.map { NetworkLock.exists(table: $0) } ?? false

    public init(image: Image, options: RestoreOptions = RestoreOptions()) {
        self.image = image
        self.options = options
    }

    /// Reports a step (`progress`), and with WB_TIMING its moment.
    func step(_ line: String) {
        stamp(line)
        progress(line)
    }

    /// With WB_TIMING, a moment (CLOCK_MONOTONIC, ns) on stderr.
    func stamp(_ what: String) {
        if Restorer.timing { FileHandle.standardError.write(Data(String(format: "wb-timing %.0f %@\n", Clock.monotonic * 1e9, what).utf8)) }
    }

    /// WB_TIMING=1 prints each step's moment (CLOCK_MONOTONIC, ns) on stderr.
    static let timing = ProcessInfo.processInfo.environment["WB_TIMING"] != nil

    var process: ProcessState { image.process }

    /// The copies the process was given, copy path → original path.
    public var privateFileNames: [String: String] { privateCopies?.names ?? [:] }

    /// Removes the copies of the process's files (`options.privateFiles`) once it has ended.
    public func removePrivateFiles() { privateCopies?.remove() }

    /// What the process was in that restore does not make: its cgroup (limits and
    /// accounting are the restoring one's) and its session keyring (the restored process
    /// shares wb's). Said when they differ.
    private func noteSurroundings(_ p: ProcessState, _ pid: Int32) {
        for ns in p.ownNamespaces ?? [] {
            if let text = ProcessState.namespaceNote(ns) { note(text, about: p) }
        }
        if let was = p.cgroups, let now = ProcFS.cgroups(pid), was != now {
            let lost = Set(was).subtracting(now).sorted(), here = Set(now).subtracting(was).sorted()
            func show(_ c: [String]) -> String { c.map { $0.hasPrefix(":") ? "cgroup2" + $0 : $0 }.joined(separator: ", ") }
            note("the process was in cgroup \(show(lost)); restored, it is in \(show(here)) (its limits and accounting are those)", about: p)
        }
        if let was = p.sessionKeyring, let now = Keyrings.session(), was != now {
            note("the process had session keyring \(was) (a service's own, say); restored, it shares wb's (\(now)): the keys it held there (credentials, tickets) are not in it", about: p)
        }
    }

    /// Whether the stub got its time namespace (the process's clocks go on from the
    /// checkpoint); if not, a note says by how much they jump.
    private func checkClocks(_ stub: Int32, _ clocks: [UInt64]) {
        let own = (try? Paths.readLink("/proc/\(stub)/ns/time")) != (try? Paths.readLink("/proc/self/ns/time"))
        let offsets = (try? Paths.readText("/proc/\(stub)/timens_offsets")) ?? ""
        if own && !(offsets.contains("monotonic 0 0") && clocks[0] > 0) { return }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let jump = (Double(now.tv_sec) + Double(now.tv_nsec) / 1e9) - Double(clocks[0]) / 1e9
        notes.append(String(format: "CLOCK_MONOTONIC and CLOCK_BOOTTIME are this machine's here (no time namespace could be made: it needs CONFIG_TIME_NS and CAP_SYS_TIME): they jump by %+.1f s for the process", jump))
    }

    /// Adds a note about process `p`: prefixed with its pid when the image holds a tree, so the
    /// user knows which process it is about.
    func note(_ text: String, about p: ProcessState) {
        let line = (image.metadata.descendants ?? []).isEmpty ? text : "pid \(p.pid): \(text)"
        if !notes.contains(line) { notes.append(line) }
    }

    public func restore() throws -> RestoredProcess {
        try withContext("restoring \(image.path)") {
            let tree = image.metadata.descendants ?? []
            if !tree.isEmpty && !options.allowTree {
                throw WBError.refused("\(image.path) holds a tree of \(tree.count + 1) processes, and debugging, fuzzing and replays work on one: restore the tree with wb restore (without --debug or --gdb-port) and attach gdb to one of its processes (gdb -p PID)")
            }
            if options.verify {
                step("verifying \(image.path)")
                // Copied page data is checked as it is copied, not in a pass of its own. Mapped
                // page data would be read only as the process touches it, so it is checked
                // here, in one read of the mapping (0.15 s per GiB from the page cache here),
                // before any process is started: a forged page must never run.
                try image.verifyData(only: [.files])
                if options.mapPages { try PageVerifier(image: image).finish() } else { pageVerifier = try PageVerifier(image: image) }
            }
            try checkCPU()
            if let base = options.privateFiles { privateCopies = try PrivateFiles(base: base) }
            step("preparing files")
            let files = try FileResolver(image: image, cache: FileCache(directory: options.cacheDirectory)).resolveAll()
            self.files = files
            // Which files are the image's copies rather than this machine's is told.
            for n in files.notes where !notes.contains(n) { notes.append(n) }
            let newNamespace = try choosePidNamespace()
            step("starting the process" + (newNamespace ? " in a new pid namespace" : " as pid \(process.pid)"))
            let clocks = options.hostClocks ? nil : process.clocks
            let spawned = try Stub.spawn(pid: process.pid, newPidNamespace: newNamespace,
                                         newUserNamespace: newNamespace && geteuid() != 0, keepFDs: [0, 1, 2], clocks: clocks)
            if let clocks { checkClocks(spawned.pid, clocks) }
            var members: [(ProcessState, Tracee)] = []
            do {
                members = [(process, try Tracee.adoptStub(spawned.pid))]
                if let path = options.networkNamespace {
                    try joinNetwork(members[0].1, path: path)
                } else if options.newNetworkNamespace || (options.isolateSockets && geteuid() == 0
                    && image.metadata.processes.contains { $0.fds.contains { $0.kind == .socket } }) {
                    try isolateNetwork(members[0].1)
                } else {
                    sockets = SocketBuilder(namespace: try NetNamespace.of(spawned.pid))
                }
                let kinds = systemVKinds
                if !kinds.isEmpty {
                    try isolateIPC(members[0].1, kinds: kinds)
                    try makeSemaphoresAndQueues(in: members[0].1)
                }
                try ownUTS(process, members[0].1)
                let (late, inherited) = tree.isEmpty ? ([], [:]) : planLateForks()
                treeInNewNamespace = newNamespace
                if !tree.isEmpty {
                    step("starting \(tree.count - late.count) more process\(tree.count - late.count == 1 ? "" : "es") of the tree")
                    members = try startTree(root: members[0].1, newNamespace: newNamespace, late: late)
                } else {
                    try ownSessionOrGroup(process, members[0].1)
                }
                let shared = SharedObjects(image: image)
                var built: [(ProcessState, Tracee, RemoteSyscalls, Scratch, FileAccess)] = []
                // Parents first; a child that shares its parent's pages is forked from it once
                // they are in, and built after it.
                var queue = members.filter { $0.0.zombieStatus == nil }
                var next = 0
                while next < queue.count {
                    let (p, t) = queue[next]
                    next += 1
                    let forkedBefore = lateMembers.count
                    built.append(try build(p, t, files: files, shared: shared, late: late, inherited: inherited[p.pid]))
                    queue += lateMembers[forkedBefore...].filter { $0.0.zombieStatus == nil }
                }
                members += lateMembers
                if !lateMembers.isEmpty {
                    try settleLate(members)
                    let sharing = lateMembers.filter { inherited[$0.0.pid] != nil }.map { "\($0.0.pid)" }
                    if !sharing.isEmpty { stamp("forked from their rebuilt parents, sharing pages: \(sharing.joined(separator: ", "))") }
                }
                try pageVerifier?.finish()
                try unlinkSocketPaths()
                step("restoring threads")
                for (p, t, leader, scratch, access) in built {
                    try shared.closeKept(in: leader)
                    try ThreadBuilder(restorer: self, tracee: t, leader: leader, scratch: scratch, files: files, process: p,
                                      access: access).build()
                }
                step("checking what was restored")
                for (p, t, _, _, _) in built { try audit(p, t) }
                for (p, t, _, _, _) in built { noteSurroundings(p, t.pid) }
                stamp("finishing connections")
                try finishConnections()
                stamp("restored")
            } catch {
                for (_, t) in (members + lateMembers.filter { l in !members.contains { $0.1 === l.1 } }).reversed() {
                    let tids = t.tids
                    t.kill()
                    // Their ends go to wb, their tracer, first: a pid namespace's init (and so
                    // the wait below) cannot finish until wb has collected them.
                    for tid in tids.filter({ $0 != t.pid }) + [t.pid] {
                        while true {
                            guard let stop = try? t.wait(tid) else { break }
                            if case .exited = stop { break }
                            if case .killed = stop { break }
                        }
                    }
                }
                _ = kill(spawned.initPid ?? spawned.pid, SIGKILL)
                var st: Int32 = 0
                _ = waitpid(spawned.initPid ?? spawned.pid, &st, 0)
                throw error
            }
            let live = members.dropFirst().filter { $0.0.zombieStatus == nil }.map(\.1)
            let restored = RestoredProcess(tracee: members[0].1, pid: spawned.pid, originalPid: process.pid,
                                           initPid: spawned.initPid, notes: notes, descendants: live)
            restored.jobStopped = Set(members.filter { $0.0.stopped == true && $0.0.zombieStatus == nil }.map { $0.1.pid })
            restored.connections = heldConnections
            return restored
        }
    }

    /// Memory and files of one process; its threads come once every process has its files.
    private func build(_ p: ProcessState, _ tracee: Tracee, files: ResolvedFiles, shared: SharedObjects,
                       late: Set<Int32> = [], inherited: InheritedMemory? = nil) throws -> (ProcessState, Tracee, RemoteSyscalls, Scratch, FileAccess) {
        if tracee.syscallGadget == 0 { tracee.syscallGadget = Stub.syscallAddress }
        let leader = try tracee.ownedSyscalls(in: tracee.pid)
        // Every signal blocked while it is rebuilt but SIGTRAP: wb's single steps raise
        // SIGTRAPs, and the kernel resets the action of a SIGTRAP it forces on a thread that
        // blocks it (the process's own handler would be lost). wb takes those SIGTRAPs itself.
        try tracee.setSignalMask(tracee.pid, Tracee.injectionMask)
        step("rebuilding memory" + (p.pid == process.pid ? "" : " of pid \(p.pid)"))
        var space = try AddressSpace(restorer: self, process: p, tracee: tracee, leader: leader, files: files, shared: shared,
                                     inherited: inherited)
        try space.buildPages()
        // Its children that share its pages get them now, by fork, before its protections.
        for c in image.metadata.descendants ?? [] where c.ppid == p.pid && late.contains(c.pid) {
            _ = try forkLate(c, from: tracee, leader: space.leader, scratch: space.scratch)
        }
        try space.finishPages()
        // A process sharing its parent's fd table has its fds already: the parent built them.
        if p.sharesParentFiles == true { return (p, tracee, space.leader, space.scratch, space.access) }
        step("reopening files" + (p.pid == process.pid ? "" : " of pid \(p.pid)"))
        var fds = FDBuilder(restorer: self, process: p, tracee: tracee, leader: space.leader, scratch: space.scratch, files: files,
                            sharedObjects: space.sharedObjects, shared: shared, access: space.access)
        try fds.build()
        readBackSocketFlags(p, tracee.pid, space.leader)
        return (p, tracee, space.leader, space.scratch, space.access)
    }

    /// Compares what was built with the image (RestoreAudit): a difference no note told of
    /// ends the restore, or, with `force`, becomes a note.
    private func audit(_ p: ProcessState, _ tracee: Tracee) throws {
        var audit = RestoreAudit(process: p, pid: tracee.pid, noted: notes, copies: privateCopies)
        audit.socketInfo = socketFlagsLock.withLock { socketFlags[tracee.pid] ?? [:] }
        if options.silenceOutput { audit.silenced = [1, 2] }
        let found = try audit.differences()
        guard !found.isEmpty else { return }
        let text = "pid \(p.pid) came back different from the image: \(found.joined(separator: "; "))"
        if options.force {
            note(text + " (restored anyway: --force)", about: p)
        } else {
            throw WBError.failed(text + ". Nothing was left running; --force restores it anyway, with this as a note")
        }
    }

    /// F_GETFL and F_GETFD of a process's sockets, run in it in one batch once its fds are
    /// built, for the audit: a socket's fdinfo holds nothing more, and a server's thousand
    /// /proc files cost far more. Few sockets, or a process whose seccomp filter refuses the
    /// calls, get their fdinfo read instead.
    private func readBackSocketFlags(_ p: ProcessState, _ pid: Int32, _ leader: RemoteSyscalls) {
        let sockets = p.fds.filter { $0.kind == .socket }.map(\.fd)
        guard sockets.count >= 32, let (results, _) = try? leader.batch(count: 2 * sockets.count, outputBytes: 0, { _ in
            sockets.flatMap { [(.fcntl, [UInt64($0), UInt64(F_GETFL)]), (.fcntl, [UInt64($0), UInt64(F_GETFD)])] }
        }) else { return }
        var read: [Int32: ProcFS.FDInfo] = [:]
        for (i, fd) in sockets.enumerated() where results[2 * i] >= 0 && results[2 * i + 1] >= 0 {
            let closeOnExec = results[2 * i + 1] & Int64(FD_CLOEXEC) != 0 ? O_CLOEXEC : 0
            read[fd] = ProcFS.FDInfo(position: 0, flags: Int32(truncatingIfNeeded: results[2 * i]) | closeOnExec, mountID: 0, extra: [:])
        }
        socketFlagsLock.withLock { socketFlags[pid] = read }
    }

    /// The kinds of System V object the image's processes use, as the restore note names them.
    private var systemVKinds: [String] {
        let ps = image.metadata.processes
        return [("shared memory", ps.contains { $0.sysvSegments?.isEmpty == false }),
                ("semaphore sets", ps.contains { $0.sysvSemaphores?.isEmpty == false }),
                ("message queues", ps.contains { $0.sysvQueues?.isEmpty == false })].filter(\.1).map(\.0)
    }

    /// Gives the restored processes an IPC namespace of their own (before any is forked), in
    /// which their System V segments, semaphore sets and message queues can have their
    /// original ids whatever this machine's namespace holds, and where they cannot touch
    /// those of processes here.
    private func isolateIPC(_ root: Tracee, kinds: [String]) throws {
        root.syscallGadget = Stub.syscallAddress
        let s = try root.ownedSyscalls(in: root.pid)
        let r = try s.raw(.unshare, 0x0800_0000 /* CLONE_NEWIPC */)
        let list = kinds.count == 1 ? kinds[0] : kinds.dropLast().joined(separator: ", ") + " and " + kinds.last!
        if r < 0 {
            throw WBError.system(call: "remote unshare(CLONE_NEWIPC)", errno: Int32(-r),
                                 what: "giving the restored process an IPC namespace for its System V \(list) (needs CAP_SYS_ADMIN: run wb restore as root)")
        }
        notes.append(kinds == ["shared memory"]
            ? "the process uses System V shared memory: it runs in an IPC namespace of its own, where its segments keep their ids"
            : "the process uses System V \(list): it runs in an IPC namespace of its own, where they keep their ids and keys")
    }

    /// The process may use instructions this CPU lacks (glibc chose its string functions for
    /// the checkpoint host's CPU at start-up), and its threads may hold register state this
    /// CPU cannot take. Both are refused, naming what is missing, unless `force`.
    func checkCPU() throws {
        let here = CPUFeatures.host
        let cpu = image.metadata.host.cpu
        let missing = process.portable ? [] : CPUCompatibility.missing(image: cpu, host: here)
        var state: UInt64 = 0
        for t in image.metadata.processes.flatMap(\.threads) { state |= CPUCompatibility.unsupportedState(t.xstate, xcr0: here.xcr0) }
        if missing.isEmpty && state == 0 { return }
        var what: [String] = []
        if !missing.isEmpty { what.append("instructions the process may use (\(missing.joined(separator: ", ")))") }
        if state != 0 { what.append("register state its threads hold (\(CPUCompatibility.componentNames(state)))") }
        let text = "this CPU (\(here.model)) lacks \(what.joined(separator: " and ")) from the checkpoint host's \(cpu.model)"
        if options.force {
            notes.append("\(text); restoring anyway (--force): the process may crash with SIGILL" + (state != 0 ? " and that register state is lost" : ""))
            return
        }
        throw WBError.refused("\(text). Restore on a CPU with them, add --force to try anyway, or checkpoint a program started with wb run --portable")
    }

    /// Whether the original pids can be had in this namespace.
    func choosePidNamespace() throws -> Bool {
        if options.pidNamespace == .new { return true }
        let wanted = image.metadata.processes.flatMap { $0.zombieStatus == nil ? $0.threads.map(\.tid) : [$0.pid] }
        var taken = wanted.filter { ProcFS.exists($0) }
        // A process that was just killed lingers as a zombie until its parent reaps it.
        var waited = 0
        while !taken.isEmpty && waited < 30 && taken.allSatisfy({ isZombieOrGone($0) }) {
            usleep(100_000)
            waited += 1
            taken = wanted.filter { ProcFS.exists($0) }
        }
        if taken.isEmpty { return false }
        notes.append("pid \(taken[0]) is in use here, so the process runs in a new pid namespace where it keeps pid \(process.pid)")
        return true
    }

    private func isZombieOrGone(_ pid: Int32) -> Bool {
        guard let stat = try? ProcFS.stat(pid) else { return true }
        return stat[3] == "Z" || stat[3] == "X"
    }
}

/// Wait status decoding without the C macros.
public enum WBExit {
    public static func exited(_ s: Int32) -> Bool { s & 0x7f == 0 }
    public static func code(_ s: Int32) -> Int32 { (s >> 8) & 0xff }
    public static func signal(_ s: Int32) -> Int32 { s & 0x7f }
}
