import Foundation
import Glibc
import WBTrace

public struct TreeCheckpointResult: Sendable {
    public var path: String
    public var root: Int32
    /// Every process, parents first, with what was stored of each.
    public var processes: [Member]
    public var imageBytes: UInt64
    /// How long the tree was stopped.
    public var pauseSeconds: Double
    public var totalSeconds: Double
    public var notes: [String]

    public struct Member: Codable, Sendable {
        public var pid: Int32
        public var ppid: Int32
        public var command: String
        public var threads: Int
        public var memoryBytes: UInt64
        /// The wait status of a process that had exited and was not yet reaped.
        public var zombieStatus: Int32?
    }
}

/// Takes a checkpoint of a process and all its descendants into one image: every process is
/// stopped (parents before their children are listed, so none escapes), captured as
/// `Checkpointer` captures one, and the tree's links are recorded across them: parent and
/// child, sessions and process groups, open file descriptions and pipes they share, shared
/// memory, Unix socket pairs between them, and children that exited but were not reaped.
public final class TreeCheckpointer {
    public let root: Int32
    public let options: CheckpointOptions
    public var progress: (String) -> Void = { _ in }
    /// Asked between steps; when it answers true every process is let go as it was.
    public var shouldStop: () -> Bool = { false }

    public init(root: Int32, options: CheckpointOptions = CheckpointOptions()) {
        self.root = root
        self.options = options
    }

    private struct Member {
        var pid: Int32
        var tracee: Tracee?
        var zombie: ProcessState?
    }

    public func checkpoint(to path: String) throws -> TreeCheckpointResult {
        try withContext("checkpoint of the process tree of pid \(root)") { try run(path) }
    }

    /// A member's memory copied while the tree ran, for its final stop to finish.
    private struct Early {
        var checkpointer: Checkpointer
        var store: PageStore
        var scanner: PageScanner
        var files: FileEmbedder
        var tracker: DirtyTracker
        var stable: [String: [PageRun]]
    }

    private func run(_ path: String) throws -> TreeCheckpointResult {
        let started = Clock.monotonic
        _ = try Checkpointer.refuseOutright(root, tracedByWB: false)
        var ancestor = getppid()
        while ancestor > 1 {
            if ancestor == root {
                throw WBError.invalidArgument("wb itself runs in the tree of pid \(root) (it is one of its descendants): checkpoint the tree from outside it, e.g. from another terminal")
            }
            guard let parent = (try? ProcFS.status(ancestor))?["PPid"].flatMap({ Int32($0) }) else { break }
            ancestor = parent
        }
        let writer = try ImageWriter(path: path)
        var members: [Member] = []
        var early: [Int32: Early] = [:]
        var stopped = Clock.monotonic
        var let_go = false
        defer {
            if !let_go {
                // Children first, so no parent runs while a child is still held.
                for m in members.reversed() { m.tracee?.detach() }
            }
            for e in early.values { e.tracker.release() }
        }
        do {
            // Leaving the tree running, each process's memory is copied while it runs (as for
            // one process), after every process passed its preflight; the tree is stopped
            // only for what they wrote meanwhile.
            if options.after == .leaveRunning && options.incremental && DirtyTracker.supported {
                early = try precopy(writer: writer)
            }
            progress("stopping the process tree of pid \(root)")
            stopped = Clock.monotonic
            try stopAll(into: &members)
            let scope = TreeScope(members: Set(members.map(\.pid)), sockets: socketsHeld(by: members.filter { $0.zombie == nil }.map(\.pid)))
            // One hold for every member's TCP connections: a connection between two of them is
            // held once, and all of them go on (or stay held for the restore) together.
            let connections = HeldConnections(targets: members.filter { $0.zombie == nil }.map(\.pid), killing: options.after == .kill)
            defer { if connections.settled == false { try? connections.letGo() } }
            var states: [ProcessState] = []
            var notes: [String] = []
            // Every process's pages first: the image's page section comes before its files.
            var captured: [(index: Int, checkpointer: Checkpointer, store: PageStore, files: FileEmbedder,
                            deleted: [Int32: [UInt8]], deferred: [DeferredRuns])] = []
            for m in members {
                if let z = m.zombie { states.append(z); continue }
                if let e = early[m.pid], !e.checkpointer.sameProgram() {
                    // It ran another program meanwhile: it is copied whole now.
                    notes.append(Checkpointer.programChanged(m.pid))
                    e.tracker.release()
                    early[m.pid] = nil
                }
                let e = early[m.pid]
                let c = e?.checkpointer ?? Checkpointer(pid: m.pid, options: options)
                c.held = m.tracee
                c.tree = scope
                if let ppid = (try? ProcFS.status(m.pid))?["PPid"].flatMap({ Int32($0) }),
                   let p = members.firstIndex(where: { $0.pid == ppid }), p < states.count, states[p].zombieStatus == nil {
                    c.parentForSharing = (states[p], ppid)
                }
                c.connections = connections
                c.progress = progress
                c.shouldStop = shouldStop
                let plan = try c.preflight()
                var files = e?.files ?? FileEmbedder(pid: m.pid, writer: writer, embedLimit: options.embedLimit,
                                                     exe: ((try? Paths.readLink("/proc/\(m.pid)/exe")) ?? "").deletedStripped.path)
                let store = e?.store ?? PageStore(memory: ProcessMemory(pid: m.pid), writer: writer, checkStop: { [unowned c] in try c.checkStop() })
                var deferred: [DeferredRuns] = []
                var deleted: [Int32: [UInt8]] = [:]
                let state = try c.capture(m.tracee!, plan: plan, memory: store.memory, store: store, scanner: try e?.scanner ?? PageScanner(pid: m.pid),
                                          files: &files, stable: e?.stable ?? [:], removed: e?.tracker.takeRemoved() ?? [],
                                          deferred: &deferred, deletedContents: &deleted, phase: { _ in })
                captured.append((states.count, c, store, files, deleted, deferred))
                states.append(state)
            }
            // Open file descriptions and fd tables are compared while every process still holds its fds.
            TreeCheckpointer.shareDescriptions(&states, zombies: Set(members.filter { $0.zombie != nil }.map(\.pid)))
            try TreeCheckpointer.shareTables(&states)
            var pause = Clock.monotonic - stopped
            for c in captured { c.checkpointer.socketCopies = [:] }
            if options.after == .leaveRunning {
                // The rest needs no stopped process.
                try connections.letGo()
                let_go = true
                for m in members.reversed() { m.tracee?.detach() }
                pause = Clock.monotonic - stopped
                for e in early.values { e.tracker.release() }
                early = [:]
            }
            for c in captured {
                try c.checkpointer.finishPages(&states[c.index], store: c.store, deferred: c.deferred)
                if c.store.tracking { c.checkpointer.applyFlags(try? ProcFS.maps(c.checkpointer.pid, withFlags: true), to: &states[c.index]) }
            }
            // Pages children share with their parents copy-on-write (found as each was
            // captured), parents first: a parent's runs are final before its children's point
            // at them.
            for c in captured where !c.checkpointer.sharedWithParent.isEmpty {
                guard let p = states.firstIndex(where: { $0.pid == states[c.index].ppid && $0.zombieStatus == nil }) else { continue }
                try CopyOnWrite.share(&states[c.index], parent: states[p], pages: c.checkpointer.sharedWithParent,
                                      unstored: c.checkpointer.unstored)
            }
            progress("storing mapped files")
            for var c in captured {
                try c.checkpointer.embedDeletedFiles(c.deleted, into: &states[c.index], writer: writer)
                try c.checkpointer.embedMappedFiles(&c.files, into: &states[c.index])
            }
            TreeCheckpointer.linkPipes(&states)
            Checkpointer.linkConnections(&states)
            var outside: [UInt64: [String]] = [:]
            for p in states { for f in p.fds where f.kind == .pipe && p.pipes.first(where: { $0.id == f.pipe })?.external == true {
                outside[f.pipe!, default: []].append("pid \(p.pid) fd \(f.fd)")
            } }
            for (id, holders) in outside.sorted(by: { $0.key < $1.key }) {
                notes.append("pipe \(id) (\(holders.joined(separator: ", "))) has its other end outside the tree")
            }
            for c in captured {
                let pid = states[c.index].pid
                notes += c.checkpointer.notes.map { pid == root ? $0 : "pid \(pid): \($0)" }
            }
            try checkStop()
            var metadata = ImageMetadata(host: HostInfo.current(), process: states[0], files: writer.embeddedFiles, notes: notes)
            metadata.descendants = Array(states.dropFirst())
            if options.after == .kill { metadata.networkLock = connections.lock?.table }
            let check = try Checkpointer.write(metadata, with: writer, options: options, progress: progress, checkStop: checkStop)
            if options.after == .kill {
                pause = Clock.monotonic - stopped
                let_go = true
                for m in members { m.tracee?.kill() }
                connections.keep()
            }
            let report = states.map { s in
                TreeCheckpointResult.Member(pid: s.pid, ppid: s.ppid, command: s.comm, threads: s.threads.count,
                                            memoryBytes: s.mappings.reduce(0) { $0 + UInt64($1.storedPageCount) * 4096 },
                                            zombieStatus: s.zombieStatus)
            }
            return TreeCheckpointResult(path: writer.path, root: root, processes: report, imageBytes: check.fileSize,
                                        pauseSeconds: pause, totalSeconds: Clock.monotonic - started, notes: notes)
        } catch {
            writer.abandon()
            throw error
        }
    }

    /// Copies the memory of every process of the running tree while it runs: each passes its
    /// preflight first (so a refusal touches nothing), then gets a dirty tracker and a copy.
    /// A process that cannot be tracked, or that appears later, is copied at the final stop.
    private func precopy(writer: ImageWriter) throws -> [Int32: Early] {
        var pids: [Int32] = []
        var queue: [(pid: Int32, parent: Int32?)] = [(root, nil)]
        while !queue.isEmpty {
            let (pid, parent) = queue.removeFirst()
            guard !pids.contains(pid), let stat = try? ProcFS.stat(pid), stat[3] != "Z", stat[3] != "X" else { continue }
            if let parent { try TreeCheckpointer.refuseSharedMemory(pid, parent, patience: 0.5) }
            pids.append(pid)
            queue += ProcFS.children(pid).map { ($0, pid) }
        }
        let scope = TreeScope(members: Set(pids), sockets: socketsHeld(by: pids))
        var checkpointers: [Checkpointer] = []
        for pid in pids {
            let c = Checkpointer(pid: pid, options: options)
            c.tree = scope
            c.progress = progress
            c.shouldStop = shouldStop
            do {
                _ = try c.preflight()
            } catch where movedOn(c) {
                continue   // exited meanwhile: the final stop will not find it
            }
            checkpointers.append(c)
        }
        var out: [Int32: Early] = [:]
        do {
            for c in checkpointers {
                try checkStop()
                let store = PageStore(memory: ProcessMemory(pid: c.pid), writer: writer, checkStop: { [unowned c] in try c.checkStop() })
                var files = FileEmbedder(pid: c.pid, writer: writer, embedLimit: options.embedLimit,
                                         exe: ((try? Paths.readLink("/proc/\(c.pid)/exe")) ?? "").deletedStripped.path)
                var pauses: [Double] = []
                let scanner: PageScanner
                let tracker: DirtyTracker?
                do {
                    scanner = try PageScanner(pid: c.pid)
                    tracker = try c.precopy(store: store, scanner: scanner, pauses: &pauses)
                } catch WBError.processGone {
                    continue   // exited meanwhile: the final stop will not find it
                } catch where movedOn(c) {
                    continue   // exited, or ran another program (copied whole at the final stop)
                }
                guard let tracker else { continue }
                // Registered before anything can fail, so it is released whatever happens.
                out[c.pid] = Early(checkpointer: c, store: store, scanner: scanner, files: files, tracker: tracker, stable: [:])
                do {
                    out[c.pid]?.stable = try c.storeStableMappings(store: store, scanner: scanner, files: &files)
                } catch where movedOn(c) {
                    tracker.release()
                    out[c.pid] = nil
                    continue
                }
                out[c.pid]?.files = files
            }
            // What each wrote while the others were copied, just before the tree is stopped.
            for c in checkpointers {
                guard let e = out[c.pid] else { continue }
                do {
                    try c.pass(store: e.store, scanner: e.scanner, tracker: e.tracker)
                } catch WBError.processGone {
                    continue
                } catch where movedOn(c) {
                    continue   // its tracker goes with the others, or at the final stop
                }
            }
        } catch {
            for e in out.values { e.tracker.release() }
            throw error
        }
        return out
    }

    /// Stops the root, then each stopped process's children, until no new process appears:
    /// a process can only fork while it runs, so once a parent is stopped its list of
    /// children is final except for what its running children add, and they are next.
    private func stopAll(into members: inout [Member]) throws {
        var queue: [(pid: Int32, parent: Int32?)] = [(root, nil)]
        var seen = Set<Int32>()
        while !queue.isEmpty {
            let (pid, parent) = queue.removeFirst()
            if seen.contains(pid) { continue }
            seen.insert(pid)
            try checkStop()
            guard let stat = try? ProcFS.stat(pid) else { continue }   // gone meanwhile
            if stat[3] == "Z" || stat[3] == "X" {
                guard pid != root else { throw WBError.invalidArgument("pid \(pid) has already exited (it is a zombie)") }
                members.append(Member(pid: pid, tracee: nil, zombie: TreeCheckpointer.zombie(pid, stat)))
                continue
            }
            if let tracer = (try? ProcFS.status(pid))?["TracerPid"], tracer != "0" {
                throw ProcFS.tracedRefusal(pid, tracer: tracer, ofTree: true)
            }
            let tracee: Tracee
            do {
                tracee = try Checkpointer.seize(pid, options: options, checkStop: checkStop)
            } catch WBError.processGone where pid != root {
                // It was exiting: once a zombie it is one (its parent, stopped, cannot reap it).
                if let stat = TreeCheckpointer.zombie(after: pid) {
                    members.append(Member(pid: pid, tracee: nil, zombie: TreeCheckpointer.zombie(pid, stat)))
                }
                continue
            }
            members.append(Member(pid: pid, tracee: tracee, zombie: nil))
            if let parent { try TreeCheckpointer.refuseSharedMemory(pid, parent) }
            queue += ProcFS.children(pid).map { ($0, pid) }
        }
    }

    /// Two processes of one address space would come back with two: refused. With
    /// `patience`, a child that may be a vfork child about to call exec (its parent runs) is
    /// given that long to stop sharing; a stopped parent has no vfork child left before its
    /// exec (a vfork parent stops only after it), so sharing then means CLONE_VM.
    /// Which processes share their parent's fd table (CLONE_FILES) or working directory,
    /// root and umask (CLONE_FS), which restore forks sharing them again; a table shared
    /// in another way (two siblings whose parent has its own) is refused by name.
    static func shareTables(_ states: inout [ProcessState]) throws {
        let live = states.indices.filter { states[$0].zombieStatus == nil }
        let index = Dictionary(live.map { (states[$0].pid, $0) }, uniquingKeysWith: { a, _ in a })
        for (what, same) in [("file descriptor table", SharedFiles.shareFDTable), ("working directory, root and umask", SharedFiles.shareFSInfo)] {
            var withParent = Set<Int32>()
            for i in live {
                let p = states[i]
                guard index[p.ppid] != nil, same(p.ppid, p.pid) else { continue }
                withParent.insert(p.pid)
                if what.hasPrefix("file") { states[i].sharesParentFiles = true } else { states[i].sharesParentFS = true }
            }
            for (n, i) in live.enumerated() {
                for j in live[(n + 1)...] {
                    let a = states[i].pid, b = states[j].pid
                    guard same(a, b) else { continue }
                    // Shared through parents that share it: the fork order gives it again.
                    func top(_ pid: Int32) -> Int32 {
                        var at = pid
                        while withParent.contains(at), let parent = index[at].map({ states[$0].ppid }) { at = parent }
                        return at
                    }
                    if top(a) != top(b) {
                        throw WBError.refused("pids \(a) and \(b) share one \(what), and neither got it from its parent (one of them, or their parent, gave up its own later): wb restores such sharing only between a process and its parent. Nothing was changed")
                    }
                }
            }
        }
    }

    private static func refuseSharedMemory(_ pid: Int32, _ parent: Int32, patience: Double = 0) throws {
        if !eventually(within: patience, { !Tracee.shareMemory(parent, pid) }) {
            throw WBError.refused("pid \(pid) shares its memory with its parent \(parent) (a child cloned with CLONE_VM, or a vfork child before its exec): wb cannot restore them sharing it. Nothing was changed; try again once it has called exec")
        }
    }

    /// Whether a member's copy was overtaken by events: it exited (the root's exit is an
    /// error), or it ran another program.
    private func movedOn(_ c: Checkpointer) -> Bool {
        (c.pid != root && ProcFS.exiting(c.pid)) || !c.sameProgram()
    }

    private func checkStop() throws {
        if shouldStop() { throw WBError.failed("checkpoint of pid \(root) interrupted: the processes run on as before and no image was written") }
    }

    /// The stat of `pid` once it is a zombie, waiting up to 0.5 s for an exiting process to
    /// become one; nil if it is gone (reaped, or its parent ignores SIGCHLD).
    private static func zombie(after pid: Int32) -> [Int: String]? {
        var stat: [Int: String]?
        _ = eventually(within: 0.5) {
            stat = try? ProcFS.stat(pid)
            return stat == nil || stat?[3] == "Z"
        }
        return stat?[3] == "Z" ? stat : nil
    }

    /// Asks `done` every millisecond, at least once, for up to `seconds`: whether it said yes.
    private static func eventually(within seconds: Double, _ done: () -> Bool) -> Bool {
        let deadline = Clock.monotonic + seconds
        while !done() {
            if Clock.monotonic >= deadline { return false }
            usleep(1000)
        }
        return true
    }

    private static func zombie(_ pid: Int32, _ stat: [Int: String]) -> ProcessState {
        var p = ProcessState(pid: pid)
        Checkpointer.takeIdentity(&p, from: stat)
        p.zombieStatus = Int32(stat[52] ?? "0") ?? 0
        return p
    }

    /// The Unix sockets (inodes) the processes `pids` hold.
    private func socketsHeld(by pids: [Int32]) -> Set<UInt64> {
        var out = Set<UInt64>()
        for pid in pids {
            for fd in (try? ProcFS.fds(pid)) ?? [] {
                if let link = try? Paths.readLink("/proc/\(pid)/fd/\(fd)"), let inode = Checkpointer.socketInode(link) { out.insert(inode) }
            }
        }
        return out
    }

    /// A pipe is outside the tree only when no process of it holds one of its ends.
    static func linkPipes(_ states: inout [ProcessState]) {
        var reads = Set<UInt64>(), writes = Set<UInt64>()
        for p in states {
            for f in p.fds where f.kind == .pipe {
                guard let id = f.pipe else { continue }
                if f.accessMode != O_WRONLY { reads.insert(id) }
                if f.accessMode != O_RDONLY { writes.insert(id) }
            }
        }
        for i in states.indices {
            for j in states[i].pipes.indices {
                let id = states[i].pipes[j].id
                states[i].pipes[j].external = !(reads.contains(id) && writes.contains(id))
            }
        }
    }

    /// Numbers the open file descriptions of files, devices, sockets, pipes, FIFOs and
    /// anonymous-inode objects (eventfd, timerfd, ...) that several fds
    /// share, in one process or across the tree (a log file a shell opened before forking, a
    /// listener a server's workers inherited): restore makes each one description again,
    /// with one offset (one socket).
    static func shareDescriptions(_ states: inout [ProcessState], zombies: Set<Int32> = []) {
        var groups: [String: [(pid: Int32, fd: Int32, id: Int)]] = [:]
        var next = 1
        for i in states.indices where !zombies.contains(states[i].pid) {
            let pid = states[i].pid
            for j in states[i].fds.indices where [.file, .deletedFile, .device, .socket, .pipe, .fifo, .eventfd, .timerfd, .signalfd, .inotify, .pidfd].contains(states[i].fds[j].kind) {
                let fd = states[i].fds[j].fd
                let key: String
                if states[i].fds[j].kind == .socket, let inode = Checkpointer.socketInode(states[i].fds[j].path) {
                    key = "socket:\(inode)"
                } else {
                    guard let st = try? Paths.stat("/proc/\(pid)/fd/\(fd)") else { continue }
                    key = "\(st.device):\(st.inode)"
                }
                var id = groups[key]?.first { SharedFiles.sameDescription($0.pid, $0.fd, pid, fd) }?.id
                if id == nil {
                    id = next
                    next += 1
                    groups[key, default: []].append((pid, fd, id!))
                }
                states[i].fds[j].description = id
            }
        }
        // A description only one fd has needs no number (restore keeps a copy of each
        // numbered one for the fds after it).
        var uses: [Int: Int] = [:]
        for p in states { for f in p.fds { if let d = f.description { uses[d, default: 0] += 1 } } }
        for i in states.indices {
            for j in states[i].fds.indices where states[i].fds[j].description.map({ uses[$0] == 1 }) == true {
                states[i].fds[j].description = nil
            }
        }
    }
}
