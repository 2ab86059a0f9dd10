import Foundation
import Glibc
import WBNet
import WBTrace

/// What `wb checkpoint` does after writing the image.
public enum AfterCheckpoint: Sendable {
    /// Let the process run on, unharmed (the default).
    case leaveRunning
    /// Kill it once the image is complete and flushed to disk.
    case kill
}

public struct CheckpointOptions: Sendable {
    public var after: AfterCheckpoint = .leaveRunning
    /// Store fds wb cannot restore yet as /dev/null placeholders and leave children out,
    /// instead of refusing.
    public var allowUnsupported = false
    /// Embed private file mappings up to this size (executables and libraries always).
    public var embedLimit: UInt64 = 64 << 20
    /// Copy memory while the process runs and stop it only for what changed meanwhile
    /// (when the kernel can track dirty pages); otherwise it is stopped for the whole copy.
    public var incremental = true
    /// Passes over the pages written during the copy before the process is stopped.
    public var precopyPasses = 4
    /// Stop early once a pass finds no more than this many written bytes.
    public var stopCopyBytes: UInt64 = 8 << 20
    /// How long a thread may take to stop once asked (nil: as long as it takes). A thread
    /// stays running while it is in the kernel: a vfork parent until its child calls exec,
    /// a read of a hung network file system until it returns.
    public var stopTimeout: Double? = 5
    /// Paths to record under another name: a process restored with copies of its files
    /// (bisect's runs) is checkpointed as holding the originals, copy path → original path.
    public var renamedFiles: [String: String] = [:]
    public init() {}
}

public struct CheckpointResult: Sendable {
    public var path: String
    public var pid: Int32
    public var threads: Int
    public var mappings: Int
    public var storedPageBytes: UInt64
    public var embeddedFiles: Int
    public var imageBytes: UInt64
    /// How long the process was stopped (the longest stop).
    public var pauseSeconds: Double
    /// Every stop, in order.
    public var pauses: [Double]
    /// Where the final stop went: phase name and seconds, in order.
    public var phases: [Phase]

    public struct Phase: Codable, Sendable {
        public var name: String
        public var seconds: Double
    }
    public var totalSeconds: Double
    public var notes: [String]
}

/// Takes a checkpoint of a running process from outside: seize and stop every thread, read
/// their state (injecting a few system calls into the process for what only it can tell),
/// copy memory, describe its files, write the image, and let the process go (or kill it).
public final class Checkpointer {
    public let pid: Int32
    public let options: CheckpointOptions
    /// Called with a short line as each phase starts.
    public var progress: (String) -> Void = { _ in }
    /// Asked between steps; when it answers true the checkpoint stops at once, leaving the
    /// process exactly as it was and no image behind.
    public var shouldStop: () -> Bool = { false }

    var notes: [String] = []
    var placeholders: [Int32: String] = [:]
    /// The process was stopped by a signal (job control) before wb attached: seen by the
    /// first preflight, while /proc still shows the stop as the process's own.
    var jobStopped: Bool?
    /// Set when the process is one of a tree being checkpointed together.
    var tree: TreeScope?
    /// In a tree, the parent as captured (and its pid as wb sees it): pages this process
    /// shares with it copy-on-write are found as its memory is captured (CopyOnWrite).
    var parentForSharing: (state: ProcessState, pid: Int32)?
    /// Those pages, by mapping start: their runs are pointed at the parent's once the runs
    /// are final (`CopyOnWrite.share`). Pages listed in `unstored` were not stored here.
    var sharedWithParent: [UInt64: [Int]] = [:]
    var unstored: Set<UInt64> = []
    /// Pseudo-terminal pairs whose master the process holds (their numbers).
    lazy var ownPtys: Set<Int32> = PseudoTerminals.masters(heldBy: [pid])
    /// The TCP connections held while they are read (shared by a tree's members).
    var connections: HeldConnections?
    /// Copies of the process's sockets, with the fd link they were taken for
    /// (Checkpointer+Sockets.swift).
    var socketCopies: [Int32: (copy: FileDescriptor, link: String)] = [:]
    /// A pidfd of the process, for taking copies of its fds.
    var processHandle: ProcessHandle?
    /// The fds as the last preflight that ran with the process running found them.
    var earlierPlans: [Int32: FDPlan] = [:]
    /// New sockets' option values, read once per kind of socket.
    let socketDefaults = SocketOptions.Defaults()
    /// Where the process's arguments and environment were when its memory copy began: an
    /// exec moves them, and the copy then belongs to another program.
    var programAtPrecopy: [String]?
    /// System V semaphore sets and message queues the process was the last to use, looked
    /// up by the first preflight only: the one at the final stop, which looks at the fds
    /// again, does not read /proc/sysvipc and semctl every semaphore while the process waits.
    /// Their state is read at the final stop (`captureIPC`).
    /// The inodes someone holds a lock on (/proc/locks), read by the first preflight, while
    /// the process runs: reading /proc/locks waits for the kernel's read-copy-update grace
    /// period, milliseconds a stopped process would wait for nothing. Sockets a lock is on
    /// are read through their fdinfo (with the lock); the others only need their flags.
    lazy var lockedFiles: Set<UInt64> = Checkpointer.lockedInodes()
    lazy var ipcObjects: (semaphores: [SysVIPC.Object], queues: [SysVIPC.Object]) = SysVIPC.lastUsed(by: pid)
    /// What of them cannot be saved: a queue holding messages on a kernel that cannot copy
    /// them without taking them (msgrcv MSG_COPY needs CONFIG_CHECKPOINT_RESTORE).
    lazy var ipcProblems: [String] = {
        unreadableQueues.map {
            "it uses System V message queue \($0.id) (key \(Checkpointer.ipcKey($0.key)), \($0.messages ?? 0) message\($0.messages == 1 ? "" : "s") queued), whose messages this kernel cannot copy without taking them (msgrcv MSG_COPY needs CONFIG_CHECKPOINT_RESTORE)"
        }
    }()
    lazy var unreadableQueues: [SysVIPC.Object] = ipcObjects.queues.filter { ($0.messages ?? 0) > 0 && !SysVIPC.copiesMessages($0.id) }
    /// A process wb already traces and keeps (see `checkpoint(to:stopped:)`).
    var held: Tracee?
    /// A process wb traces for its whole life and that is running (see `checkpoint(to:attached:)`).
    var attached: Tracee?
    /// For an attached process: signals that keep their thread stopped when it is let go
    /// (see `Tracee.resumeAll(hold:)`), so the caller sees them.
    public var holdSignals: ((Int32) -> Bool)?

    public init(pid: Int32, options: CheckpointOptions = CheckpointOptions()) {
        self.pid = pid
        self.options = options
    }

    public func checkpoint(to path: String) throws -> CheckpointResult {
        try checkpoint(to: path, stopped: nil)
    }

    /// A checkpoint of a process wb already holds stopped (a debugging session): it stays
    /// stopped and traced afterwards.
    public func checkpoint(to path: String, stopped: Tracee?) throws -> CheckpointResult {
        let started = Clock.monotonic
        held = stopped
        stamp("preflight")
        let plan = try withContext("checkpoint of pid \(pid)") { try preflight() }
        try checkStop()
        // The image file exists before the process is touched: a bad path costs it nothing.
        let writer = try ImageWriter(path: path)
        do {
            return try withContext("checkpoint of pid \(pid)") {
                try run(plan: plan, writer: writer, started: started)
            }
        } catch {
            writer.abandon()
            throw error
        }
    }

    /// A checkpoint of a running process wb already traces (wb run --timeline): it is
    /// stopped and let go as a seized one would be, and stays traced and running afterwards.
    public func checkpoint(to path: String, attached: Tracee) throws -> CheckpointResult {
        self.attached = attached
        defer { self.attached = nil }
        return try checkpoint(to: path, stopped: nil)
    }

    /// Stops the process: seizing it, or stopping the threads of one wb holds.
    func acquire() throws -> Tracee {
        if let attached {
            // Threads held at a signal by an earlier let-go are stopped already. If one does
            // not stop in time, those that did run on (the late one stops later, and its
            // supervisor lets it go).
            do {
                try attached.stopAll(alreadyStopped: Set(attached.heldStops.keys))
            } catch {
                attached.resumeAll(hold: holdSignals)
                throw error
            }
            return attached
        }
        return try Checkpointer.seize(pid, options: options, checkStop: checkStop)
    }

    /// Seizes and stops `pid` within `options.stopTimeout`; a thread that does not stop in
    /// time ends the checkpoint with the process let go (the thread itself is let go when
    /// wb exits: a running thread cannot be detached).
    static func seize(_ pid: Int32, options: CheckpointOptions, checkStop: @escaping () throws -> Void) throws -> Tracee {
        do {
            return try Tracee.seize(pid, stopTimeout: options.stopTimeout, whileStopping: checkStop)
        } catch let error as WBError {
            guard case .notStopped = error else { throw error }
            throw WBError.failed("\(error): nothing was changed and no image was written; try again once it is back from the kernel, or allow it longer with --stop-timeout")
        }
    }

    /// Lets the process run on: detaching, or resuming the threads of one wb holds.
    func release(_ tracee: Tracee) {
        if tracee === attached { tracee.resumeAll(hold: holdSignals) } else { tracee.detach() }
    }

    /// WB_TIMING=1 prints each step's moment (CLOCK_MONOTONIC, ns) on stderr, to line up
    /// with what a workload measured.
    static let timing = ProcessInfo.processInfo.environment["WB_TIMING"] != nil
    func stamp(_ what: String) {
        if Checkpointer.timing { FileHandle.standardError.write(Data(String(format: "wb-timing %.0f %@\n", Clock.monotonic * 1e9, what).utf8)) }
    }

    private func run(plan: Preflight, writer: ImageWriter, started: Double) throws -> CheckpointResult {
        var plan = plan
        let memory = ProcessMemory(pid: pid)
        var store = PageStore(memory: memory, writer: writer, checkStop: { [unowned self] in try self.checkStop() })
        var scanner = try PageScanner(pid: pid)
        var pauses: [Double] = []
        // Leaving it running, the process is stopped only at the end, for the pages it wrote
        // while the rest was copied (see docs/architecture.md).
        var files = FileEmbedder(pid: pid, writer: writer, embedLimit: options.embedLimit,
                                 exe: ((try? Paths.readLink("/proc/\(pid)/exe")) ?? "").deletedStripped.path)
        var tracker: DirtyTracker?
        var stable: [String: [PageRun]] = [:]
        if held == nil && options.after == .leaveRunning && options.incremental && DirtyTracker.supported {
            do {
                tracker = try precopy(store: store, scanner: scanner, pauses: &pauses)
                if tracker != nil { stable = try storeStableMappings(store: store, scanner: scanner, files: &files) }
            } catch where !sameProgram() {
                // It ran another program (exec) while its memory was copied: the final stop
                // copies the new one's (below).
                tracker?.release()
                tracker = nil
            }
        }
        defer { tracker?.release() }

        if plan.connections > 0 && tree == nil {
            if connections == nil { connections = HeldConnections(targets: [pid], killing: options.after == .kill) }
            try withContext("checkpoint of pid \(pid)") { try connections!.prepare() }
        }
        // Let go if anything below fails before the stop: nothing of the hold stays.
        do {
            try settleSockets(plan)
        } catch {
            try? connections?.letGo()
            throw error
        }
        progress("stopping \(plan.threads) thread(s) of pid \(pid)")
        stamp("final stop")
        let tracee = try held ?? acquire()
        stamp("stopped")
        let stopped = Clock.monotonic
        var phases: [CheckpointResult.Phase] = []
        var lap = stopped
        func phase(_ name: String) {
            let now = Clock.monotonic
            phases.append(.init(name: name, seconds: now - lap))
            lap = now
        }
        var released = held != nil
        defer { if !released { release(tracee) } }
        // Before the process runs again (declared after the release above, so run before
        // it): connections held for the capture are let go, unless kept for a restore. A
        // process wb holds (a debugger's, a timeline's) is let go by its caller.
        defer { if connections?.settled == false { try? connections?.letGo() } }
        // Stopped by this checkpoint after its preflight (the process ran in between: an fd
        // it opened since, a connection it accepted, must not be missed).
        if held == nil {
            if programAtPrecopy != nil && !sameProgram() {
                // It ran another program meanwhile: what was copied belongs to the old one.
                notes.append(Checkpointer.programChanged(pid))
                tracker?.release()
                tracker = nil
                stable = [:]
                store = PageStore(memory: memory, writer: writer, checkStop: { [unowned self] in try self.checkStop() })
                scanner = try PageScanner(pid: pid)
            }
            // It ran since its preflight, and may have opened or closed fds meanwhile: they
            // are looked at again now that it is stopped (a refusal still lets it go as it was).
            placeholders = [:]
            notes.removeAll { $0.hasPrefix("left out: ") }
            let outer = held
            held = tracee
            defer { held = outer }
            plan = try withContext("checkpoint of pid \(pid)") { try preflight() }
        }
        var deferred: [DeferredRuns] = []
        var deletedContents: [Int32: [UInt8]] = [:]
        var process = try capture(tracee, plan: plan, memory: memory, store: store, scanner: scanner, files: &files,
                                  stable: stable, removed: tracker?.takeRemoved() ?? [], deferred: &deferred,
                                  deletedContents: &deletedContents, phase: phase)
        stamp("captured")
        if tree == nil {
            var one = [process]
            TreeCheckpointer.shareDescriptions(&one)
            Checkpointer.linkConnections(&one)
            process = one[0]
        }
        // Read: the connections go on as soon as the process does, and wb keeps no socket of
        // its open (a copy would keep one it closes from closing).
        socketCopies = [:]
        stamp("linked")
        if options.after == .leaveRunning { try connections?.letGo() }
        stamp("connections let go")
        // The userfaultfd is let go, and then the mappings' flags read, on another thread
        // while the pages and files are written here: the two walk the process's page tables
        // under its mapping lock (one after the other: side by side they only wait for each
        // other); the writes do not touch the process.
        let letGo = DispatchGroup()
        let flags = MappingFlags()
        defer { letGo.wait() }
        if options.after == .leaveRunning && held == nil {
            release(tracee)
            released = true
            phase("resume")
            pauses.append(Clock.monotonic - stopped)
            stamp("resumed")
            if let t = tracker {
                tracker = nil
                let pid = self.pid
                DispatchQueue.global().async(group: letGo) {
                    t.release()
                    flags.entries = try? ProcFS.maps(pid, withFlags: true)
                }
            }
        }

        // The rest needs no stopped process: page runs, mapped files, flags, the image itself.
        try finishPages(&process, store: store, deferred: deferred)
        stamp("pages written")
        progress("storing mapped files")
        try embedDeletedFiles(deletedContents, into: &process, writer: writer)
        try embedMappedFiles(&files, into: &process)
        stamp("files written")
        letGo.wait()
        stamp("released")
        if store.tracking { applyFlags(flags.entries ?? (try? ProcFS.maps(pid, withFlags: true)), to: &process) }
        var metadata = ImageMetadata(host: HostInfo.current(), process: process, files: writer.embeddedFiles, notes: notes)
        if options.after == .kill { metadata.networkLock = connections?.lock?.table }
        let check = try Checkpointer.write(metadata, with: writer, options: options, progress: progress, checkStop: checkStop)
        stamp("image written")
        if options.after == .kill && held == nil {
            tracee.kill()
            connections?.keep()
            released = true
            pauses.append(Clock.monotonic - stopped)
        }
        let stored = process.mappings.reduce(UInt64(0)) { $0 + UInt64($1.storedPageCount) * 4096 }
        return CheckpointResult(path: writer.path, pid: pid, threads: process.threads.count, mappings: process.mappings.count,
                                storedPageBytes: stored, embeddedFiles: writer.embeddedFiles.count,
                                imageBytes: check.fileSize, pauseSeconds: pauses.max() ?? 0, pauses: pauses, phases: phases,
                                totalSeconds: Clock.monotonic - started, notes: notes)
    }

    /// Everything of a stopped process: its threads, process state, memory (pages go to
    /// `store`; tracked memory's runs are put together later from `deferred`) and files
    /// (deleted files' contents into `deletedContents`, stored once the pages are written).
    func capture(_ tracee: Tracee, plan: Preflight, memory: ProcessMemory, store: PageStore, scanner: PageScanner,
                 files: inout FileEmbedder, stable: [String: [PageRun]], removed: [(start: UInt64, end: UInt64)],
                 deferred: inout [DeferredRuns], deletedContents: inout [Int32: [UInt8]],
                 phase: (String) -> Void) throws -> ProcessState {
        try checkStop()
        var process = try captureThreads(tracee)
        phase("threads")
        try checkStop()
        try captureProcess(tracee, into: &process)
        phase("process state")
        try checkStop()
        progress("copying memory of pid \(pid)")
        try captureMemory(memory, into: &process, store: store, scanner: scanner, files: &files, stable: stable,
                          removed: removed, deferred: &deferred)
        try captureNUMAPolicies(tracee, into: &process)
        phase("memory")
        try checkStop()
        try captureFiles(tracee, into: &process, plan: plan, deletedContents: &deletedContents)
        stamp("files")
        phase("files")
        try captureIPC(into: &process)
        stamp("ipc")
        try checkStop()
        // Signals a thread had already dequeued when it stopped are pending in the image.
        for (i, t) in process.threads.enumerated() {
            if let info = tracee.interceptedSignals[t.tid] {
                let data = Data(info)
                process.threads[i].pending.insert(PendingSignal(signal: data.withUnsafeBytes { $0.load(as: Int32.self) }, siginfo: data), at: 0)
            }
        }
        return process
    }

    /// Copies memory while the process runs. A short stop creates a userfaultfd inside the
    /// process; its anonymous writable memory is write-protected (async: writes go on, the
    /// kernel only marks the pages), stored, and the pages written meanwhile are stored
    /// again in passes, until what is left is small enough to store while it is stopped.
    func precopy(store: PageStore, scanner: PageScanner, pauses: inout [Double]) throws -> DirtyTracker? {
        let t0 = Clock.monotonic
        stamp("first stop")
        let tracee = try acquire()
        programAtPrecopy = programIdentity()
        let maps = try ProcFS.maps(pid, withFlags: false)
        let tracker: DirtyTracker
        do {
            tracee.syscallGadget = try tracee.findSyscallGadget(in: maps)
            tracker = try tracee.withSyscalls(in: pid) { try DirtyTracker(tracee: tracee, syscalls: $0) }
        } catch let error as WBError {
            release(tracee)
            notes.append("memory was copied with the process stopped: \(error)")
            return nil
        }
        release(tracee)
        pauses.append(Clock.monotonic - t0)
        stamp("first resume")
        do {
            for e in maps where !e.shared && e.protection & 2 != 0 && (e.path.isEmpty || e.path == "[heap]" || e.path == "[stack]" || e.path.hasPrefix("[anon:")) {
                if tracker.register(start: e.start, end: e.end) { store.track(start: e.start, end: e.end) }
            }
            progress("copying memory while pid \(pid) runs")
            // Each 64 MiB is write-protected just before it is copied, so protecting the
            // next part overlaps writing the last one to the image. A page is copied only
            // after it is protected: a write after its copy is found by the passes. Discards
            // recorded so far are taken before the copy: they may be of pages not copied yet
            // and written again since, whose copy a later forget would drop.
            for s in tracker.steps {
                try tracker.protect(start: s.start, end: s.end)
                store.forget(tracker.takeRemoved())
                try store.store(try scanner.scan(start: s.start, end: s.end))
            }
            stamp("copied")
            for _ in 0..<options.precopyPasses {
                if try pass(store: store, scanner: scanner, tracker: tracker) <= options.stopCopyBytes { break }
            }
        } catch {
            tracker.release()
            throw error
        }
        return tracker
    }

    /// Stores again the pages written since the last pass (protecting them again in the same
    /// walk); returns how many bytes that was.
    @discardableResult
    func pass(store: PageStore, scanner: PageScanner, tracker: DirtyTracker) throws -> UInt64 {
        var written: UInt64 = 0
        for r in tracker.ranges {
            let dirty = try scanner.scan(start: r.start, end: r.end, writtenOnly: true, reprotect: true)
            written += dirty.reduce(0) { $0 + $1.end - $1.start }
            // Discards the scan may have found rewritten are forgotten before the pages
            // are stored: forgotten later, they would drop what was stored after them.
            store.forget(tracker.takeRemoved())
            try store.store(dirty)
        }
        // A small pass is followed by the final stop, which reads about as much again: into
        // memory made ready now.
        if written <= options.stopCopyBytes { store.reserveHold(written) }
        stamp("pass: \(written) bytes written")
        return written
    }
}

extension Checkpointer {
    /// Completes the image and reads it back before it gets its name and before anything
    /// irreversible happens; with `--kill` it is flushed and every checksum verified first.
    static func write(_ metadata: ImageMetadata, with writer: ImageWriter, options: CheckpointOptions,
                      progress: (String) -> Void, checkStop: () throws -> Void) throws -> Image {
        progress("writing \(writer.path)")
        try writer.complete(metadata, sync: options.after == .kill)
        let check = try Image(path: writer.temporaryPath, displayName: writer.path)
        if options.after == .kill { try check.verifyData() }
        try checkStop()
        try writer.commit()
        return check
    }

    /// Once the process runs again: writes the pages read at the final stop and puts
    /// together the page runs of tracked memory.
    func finishPages(_ process: inout ProcessState, store: PageStore, deferred: [DeferredRuns]) throws {
        try store.writeHeld()
        for d in deferred {
            process.mappings[d.mapping].pages = PageStore.merge(store.runs(start: d.start, end: d.end, present: d.present), d.untracked)
        }
    }

    /// The mappings' flags, read once the tracker was let go (not at the stop, where
    /// `capture` reads maps without them: smaps walks every page table).
    func applyFlags(_ entries: [ProcFS.MapsEntry]?, to process: inout ProcessState) {
        guard let entries else { return }
        let byStart = Dictionary(entries.map { ($0.start, $0.vmFlags) }, uniquingKeysWith: { a, _ in a })
        for i in process.mappings.indices {
            if let f = byStart[process.mappings[i].start] { process.mappings[i].vmFlags = f }
        }
    }

    /// The addresses of the process's arguments and environment, and its executable.
    func programIdentity() -> [String] {
        let stat = (try? ProcFS.stat(pid)) ?? [:]
        return (48...51).map { stat[$0] ?? "" } + [(try? Paths.readLink("/proc/\(pid)/exe")) ?? ""]
    }

    /// Whether the process still runs the program whose memory the copy began with.
    func sameProgram() -> Bool { programAtPrecopy == nil || programAtPrecopy == programIdentity() }

    /// The note for a process that ran another program while its memory was copied.
    static func programChanged(_ pid: Int32) -> String {
        "pid \(pid) started another program while its memory was copied; its memory was copied again with it stopped"
    }

    func checkStop() throws {
        if shouldStop() {
            throw WBError.failed("checkpoint of pid \(pid) interrupted: the process runs on as before and no image was written")
        }
    }
}

/// The mappings' flags as read on another thread (see `run`).
private final class MappingFlags: @unchecked Sendable {
    var entries: [ProcFS.MapsEntry]?
}
