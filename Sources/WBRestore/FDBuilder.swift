import Foundation
import Glibc
import WBNet
import WBTrace

private let stream = Int32(SOCK_STREAM.rawValue), dgram = Int32(SOCK_DGRAM.rawValue), seqpacket = Int32(SOCK_SEQPACKET.rawValue)

/// Re-creates the image's fds inside the process at their original numbers.
///
/// Every object is first created at a high number (above all the image's fds), so creating
/// one never lands on a number another still needs; the final numbers are made with dup3.
/// The stub's own stdin, stdout and stderr are wb's: fds that were a terminal, or a pipe to
/// something outside the process, on 0-2 are attached to them.
struct FDBuilder {
    let restorer: Restorer
    let tracee: Tracee
    let leader: RemoteSyscalls
    let scratch: Scratch
    let files: ResolvedFiles
    var sharedObjects: [String: Int32]
    let process: ProcessState
    let shared: SharedObjects
    let access: FileAccess

    private var base: Int32 = 3
    private var temps: [Int32] = []
    /// Sockets made for image fds in one batch, not yet built (by image fd number).
    private var premade: [Int32: Int32] = [:]
    /// TCP and UDP sockets built in one go (by image fd number): the outcome of each.
    private var prebuilt: [Int32: Result<(notes: [String], pending: SocketBuilder.Pending?), Error>] = [:]
    /// A pidfd of the process, for taking copies of its fds.
    private var handle: ProcessHandle?
    /// The process's Unix listeners with a name, made already (their fds at high numbers).
    private var listeners: [(name: SocketAddress, fd: Int32)] = []
    /// Pair ends (inodes) made by connect and accept on such a listener: their names are kept.
    private var namedPairs = Set<UInt64>()
    private var inherited: [Int32: Int32] = [:]
    private var pipeEnds: [UInt64: (read: Int32, write: Int32)] = [:]
    private var externalSources: [UInt64: Int32] = [:]

    init(restorer: Restorer, process: ProcessState, tracee: Tracee, leader: RemoteSyscalls, scratch: Scratch, files: ResolvedFiles,
         sharedObjects: [String: Int32], shared: SharedObjects, access: FileAccess) {
        self.restorer = restorer; self.process = process; self.tracee = tracee; self.leader = leader; self.scratch = scratch
        self.files = files; self.sharedObjects = sharedObjects; self.shared = shared; self.access = access
    }

    mutating func build() throws {
        let fds = process.fds.sorted { $0.fd < $1.fd }
        base = max(3, (fds.last?.fd ?? 0) + 1)
        for s: Int32 in 0...2 {
            inherited[s] = try high(s)
        }
        for (key, fd) in sharedObjects { sharedObjects[key] = try high(fd) }
        for s in fds where s.fd <= 2 && (s.kind == .pipe || s.kind == .tty) {
            if let id = s.pipe, process.pipes.first(where: { $0.id == id })?.external == true { externalSources[id] = inherited[s.fd] }
        }
        // Sockets are made in the process a few round trips for all of them (makeSockets);
        // listening and bound Unix sockets are built first: a client of the image waiting in
        // one's accept queue, or a datagram socket connected to one, connects to it again.
        try makeSockets(fds)
        var prepared: [Int32: Int32] = [:]
        for s in fds where s.kind == .socket && (s.net?.state == .listening || (s.net?.state == .bound && s.net?.family == AF_UNIX)) {
            prepared[s.fd] = try withContext("restoring fd \(s.fd) (\(s.path))") { try self.sharedSource(for: s) }
            if let net = s.net, net.family == AF_UNIX, net.state == .listening, let name = net.local, !name.host.isEmpty {
                listeners.append((name, prepared[s.fd]!))
            }
        }
        // Connections accepted on those listeners before any client waiting in one connects
        // (the accept must take this very connection).
        for s in fds where s.kind == .unixSocket && !listeners.isEmpty && prepared[s.fd] == nil {
            prepared[s.fd] = try withContext("restoring fd \(s.fd) (\(s.path))") { try self.sharedSource(for: s) }
        }
        // Every fd's object first (at a high number), then all of them put at their numbers
        // with their offsets and status flags in one batch.
        var placing: [(SyscallNumber, [UInt64])] = []
        var what: [String] = []
        for s in fds {
            let name = "fd \(s.fd) (\(s.path))"
            let silenced = restorer.options.silenceOutput && (s.fd == 1 || s.fd == 2)
            let source = try prepared[s.fd] ?? withContext("restoring \(name)") { silenced ? try open("/dev/null", O_WRONLY) : try self.sharedSource(for: s) }
            placing.append((.dup3, [UInt64(source), UInt64(s.fd), s.closeOnExec ? UInt64(O_CLOEXEC) : 0]))
            what.append("placing \(name)")
            if s.kind == .file || s.kind == .deletedFile {
                // A position past what lseek allows is the file's business: not checked.
                placing.append((.lseek, [UInt64(s.fd), s.offset, UInt64(SEEK_SET)]))
                what.append("")
            }
            if [.pipe, .fifo, .eventfd, .timerfd, .signalfd, .epoll, .unixSocket, .socket, .pidfd, .inotify, .fanotify, .ptyMaster, .ptySlave].contains(s.kind) {
                // Status flags (O_NONBLOCK, O_APPEND, ...) belong to the open file description.
                placing.append((.fcntl, [UInt64(s.fd), UInt64(F_SETFL), UInt64(s.flags & ~O_ACCMODE)]))
                what.append("setting the flags of \(name)")
            }
        }
        for (i, r) in try scratch.batch(placing, leader: leader).enumerated() where r < 0 && !what[i].isEmpty {
            throw WBError.system(call: "remote \(placing[i].0)", errno: Int32(-r), what: what[i])
        }
        for s in fds where s.kind == .epoll { try watch(s, placed: Set(fds.map(\.fd))) }
        try controllingTerminal()
        if let removed = process.deletedCwd {
            let dir = try deletedDirectory(process.cwd.deletedStripped.path, removed, holder: "the working directory")
            try leader.call(.fchdir, UInt64(dir), what: "entering the removed working directory \(process.cwd)")
        }
        _ = try scratch.batch(temps.map { (.close, [UInt64($0)]) }, leader: leader)
    }

    /// The image's sockets, made in the process in three round trips for all of them
    /// (socket(), then F_DUPFD above the image's fd numbers, then close of the first
    /// numbers), each built later from wb's side (`netSocket`). One per open file
    /// description (another fd of it, here or in a process restored before, shares it).
    private mutating func makeSockets(_ fds: [FDState]) throws {
        var wanted: [FDState] = []
        var descriptions = Set<Int>()
        for s in fds where s.kind == .socket {
            guard let n = s.net, !(n.family == AF_UNIX && n.state == .peerClosed) else { continue }
            if let d = s.description, shared.entry("description:\(d)") != nil || !descriptions.insert(d).inserted { continue }
            wanted.append(s)
        }
        guard !wanted.isEmpty else { return }
        // Made as the process (a socket belongs to its maker's uid).
        let made = try access.asProcessIdentity {
            try scratch.batch(wanted.map { s in
                (.socket, [UInt64(UInt32(bitPattern: s.net!.family)), UInt64(UInt32(bitPattern: s.net!.type)) | UInt64(O_CLOEXEC),
                           UInt64(UInt32(bitPattern: s.net!.proto))])
            }, leader: leader)
        }
        if let bad = made.firstIndex(where: { $0 < 0 }) {
            let ok = made.filter { $0 >= 0 }
            _ = try? scratch.batch(ok.map { (.close, [UInt64($0)]) }, leader: leader)
            throw WBError.system(call: "remote socket", errno: Int32(-made[bad]),
                                 what: "creating fd \(wanted[bad].fd) (\(SocketBuilder.name(wanted[bad].net!)))")
        }
        let moved = try scratch.batch(made.map { (.fcntl, [UInt64($0), 1030 /* F_DUPFD_CLOEXEC */, UInt64(base)]) }, leader: leader)
        _ = try scratch.batch(made.map { (.close, [UInt64($0)]) }, leader: leader)
        if let bad = moved.firstIndex(where: { $0 < 0 }) {
            throw WBError.system(call: "remote fcntl(F_DUPFD_CLOEXEC)", errno: Int32(-moved[bad]), what: "moving fd \(wanted[bad].fd)'s new socket")
        }
        for (i, s) in wanted.enumerated() {
            premade[s.fd] = Int32(moved[i])
            temps.append(Int32(moved[i]))
        }
        // TCP and UDP sockets are built from wb's side alone (Unix ones bind paths through
        // the process): all of them at once, on every core.
        let ip = wanted.filter { $0.net!.family == AF_INET || $0.net!.family == AF_INET6 }
        guard !ip.isEmpty else { return }
        let policies = try ip.map { try restorer.tcpPolicy(for: $0.net!, name: SocketBuilder.name($0.net!)) }
        let copies = try ip.map { try take(premade[$0.fd]!) }
        let builder = restorer.sockets
        // Listeners (and every other socket) before the connections: a connection rebuilt in
        // repair mode binds its port over anything, and a listener on that port that listens
        // after it is refused (EADDRINUSE).
        let connection = ip.map { $0.net!.tcp != nil }
        for phase in [false, true] {
            let indices = ip.indices.filter { connection[$0] == phase }
            let results = try Parallel.map(indices.count) { k -> Result<(notes: [String], pending: SocketBuilder.Pending?), Error> in
                let i = indices[k]
                return Result {
                    try withContext("restoring fd \(ip[i].fd) (\(SocketBuilder.name(ip[i].net!)))") {
                        try builder.build(copies[i], ip[i].net!, tcp: policies[i])
                    }
                }
            }
            for (k, r) in results.enumerated() { prebuilt[ip[indices[k]].fd] = r }
        }
    }

    /// Takes the locks the process's fds held again, without waiting: a lock someone here
    /// holds now is an error naming it (the restored process must not believe it has a lock
    /// it has not). Called once no fd of wb's own is closed in the process any more: closing
    /// any fd of a file drops the process's POSIX locks on it.
    static func takeLocks(of process: ProcessState, leader: RemoteSyscalls, scratch: Scratch) throws {
        for s in process.fds { try lock(s, leader: leader, scratch: scratch) }
    }

    /// Who gets a signal for I/O on each fd, and which: F_SETOWN_EX and F_SETSIG. An owner
    /// must come back with the image (the process, one of its threads, a process or process
    /// group of its tree); one outside it would be another process here, so it is left out,
    /// with a note.
    static func setSignalOwners(of process: ProcessState, in restorer: Restorer, leader: RemoteSyscalls, scratch: Scratch) throws {
        let processes = restorer.image.metadata.processes
        for s in process.fds {
            guard let o = s.signalOwner else { continue }
            let inside: Bool
            switch o.type {
            case 0: inside = process.threads.contains { $0.tid == o.pid }
            case 1: inside = processes.contains { $0.pid == o.pid }
            default:
                // A tree's groups come back; a single process keeps only a session it led
                // without a terminal (Restorer.ownSessionOrGroup).
                inside = processes.count > 1 ? processes.contains { $0.pgid == o.pid }
                    : process.pid == o.pid && process.sid == o.pid && !process.fds.contains { $0.kind == .tty }
            }
            let kind = ["thread", "process", "process group"][Int(o.type)]
            if o.pid != 0 && inside {
                scratch.reset()
                var bytes: [UInt8] = []
                withUnsafeBytes(of: o.type.littleEndian) { bytes += $0 }
                withUnsafeBytes(of: o.pid.littleEndian) { bytes += $0 }
                let at = try scratch.put(bytes)
                try leader.call(.fcntl, UInt64(s.fd), 15 /* F_SETOWN_EX */, at, what: "making \(kind) \(o.pid) the owner of fd \(s.fd)")
            } else if o.pid != 0 {
                restorer.note("fd \(s.fd) (\(s.path)) sent its I/O signals to \(kind) \(o.pid), which is not restored with it; it sends none now", about: process)
            }
            if o.signal != 0 {
                try leader.call(.fcntl, UInt64(s.fd), 10 /* F_SETSIG */, UInt64(o.signal), what: "setting the I/O signal of fd \(s.fd)")
            }
        }
    }

    private static func lock(_ s: FDState, leader: RemoteSyscalls, scratch: Scratch) throws {
        for l in s.locks ?? [] {
            let what = "\(l.write ? "write" : "read") \(l.kind.rawValue) lock on fd \(s.fd) (\(s.path)) " +
                (l.kind == .flock || l.kind == .lease ? "" : "bytes \(l.start)-\(l.end.map(String.init) ?? "end")")
            let r: Int64
            switch l.kind {
            case .posix, .ofd:
                scratch.reset()
                // struct flock: l_type (F_WRLCK 1, F_RDLCK 0) and l_whence (SEEK_SET) as shorts,
                // l_start, l_len (0: to the end), l_pid.
                let length = l.end.map { $0 &- l.start &+ 1 } ?? 0
                let at = try scratch.put(words: [l.write ? 1 : 0, l.start, length, 0])
                r = try leader.raw(.fcntl, UInt64(s.fd), l.kind == .posix ? 6 /* F_SETLK */ : 37 /* F_OFD_SETLK */, at)
            case .flock:
                r = try leader.raw(.flock, UInt64(s.fd), (l.write ? 2 : 1) | 4 /* LOCK_NB */)
            case .lease:
                r = try leader.raw(.fcntl, UInt64(s.fd), 1024 /* F_SETLEASE */, l.write ? 1 : 0)
            }
            if r == -Int64(EAGAIN) || r == -Int64(EACCES) || r == -Int64(EWOULDBLOCK) {
                throw WBError.refused("the process held a \(what), and another process holds a lock there now; restore once it lets go")
            }
            if r < 0 { throw WBError.system(call: "remote fcntl/flock", errno: Int32(-r), what: "taking the \(what) again") }
        }
    }

    /// Adds an epoll instance's interest list once every fd it watches is in place: the
    /// plain watches in batches (a server's thousand connections in a round trip or two),
    /// those through a twin one by one.
    private func watch(_ s: FDState, placed: Set<Int32>) throws {
        var plain: [EpollWatch] = []
        for w in s.epoll ?? [] {
            if let twin = w.twin, placed.contains(twin) {
                try watchThroughTwin(s, w, twin: twin, occupied: placed.contains(w.fd))
                continue
            }
            guard placed.contains(w.fd) else {
                restorer.note("epoll fd \(s.fd) watched fd \(w.fd), which was closed after it was added and whose file no other fd holds; that watch is gone", about: process)
                continue
            }
            plain.append(w)
        }
        for start in stride(from: 0, to: plain.count, by: 4096) {
            let chunk = plain[start..<min(plain.count, start + 4096)]
            scratch.reset()
            var calls: [(SyscallNumber, [UInt64])] = []
            for w in chunk {
                let at = try scratch.put(FDBuilder.event(w))
                calls.append((.epollCtl, [UInt64(s.fd), 1 /* EPOLL_CTL_ADD */, UInt64(w.fd), at]))
            }
            for (i, r) in try scratch.batch(calls, leader: leader).enumerated() where r < 0 {
                throw WBError.system(call: "remote epoll_ctl", errno: Int32(-r), what: "adding fd \(chunk[chunk.startIndex + i].fd) to epoll fd \(s.fd)")
            }
        }
    }

    /// struct epoll_event: the mask, then the data (packed).
    static func event(_ w: EpollWatch) -> [UInt8] {
        var ev: [UInt8] = []
        withUnsafeBytes(of: w.events.littleEndian) { ev += $0 }
        withUnsafeBytes(of: w.data.littleEndian) { ev += $0 }
        return ev
    }

    /// EPOLL_CTL_ADD of watch `w` to epoll fd `s` (struct epoll_event: the mask, then the data).
    private func add(_ w: EpollWatch, to s: FDState) throws {
        scratch.reset()
        let at = try scratch.put(FDBuilder.event(w))
        try leader.call(.epollCtl, UInt64(s.fd), 1 /* EPOLL_CTL_ADD */, UInt64(w.fd), at, what: "adding fd \(w.fd) to epoll fd \(s.fd)")
    }

    /// A watch added through fd `w.fd`, which was then closed (or given to another file)
    /// while `twin` kept the file: the watch is added through a copy of `twin` numbered
    /// `w.fd` (the kernel keys watches by file and fd number), and the number is given back.
    private func watchThroughTwin(_ s: FDState, _ w: EpollWatch, twin: Int32, occupied: Bool) throws {
        var saved: Int64 = -1
        if occupied {
            saved = try Int64(leader.call(.fcntl, UInt64(w.fd), 1030 /* F_DUPFD_CLOEXEC */, UInt64(base), what: "moving fd \(w.fd) aside"))
        }
        try leader.call(.dup3, UInt64(twin), UInt64(w.fd), 0, what: "numbering fd \(twin)'s file \(w.fd) for epoll fd \(s.fd)")
        try add(w, to: s)
        if occupied {
            let cloexec = process.fds.first { $0.fd == w.fd }?.closeOnExec == true
            try leader.call(.dup3, UInt64(saved), UInt64(w.fd), cloexec ? UInt64(O_CLOEXEC) : 0, what: "putting fd \(w.fd) back")
            _ = try leader.raw(.close, UInt64(saved))
        } else {
            _ = try leader.raw(.close, UInt64(w.fd))
        }
    }

    /// Moves a freshly made fd above the image's fd numbers.
    private mutating func high(_ fd: Int32) throws -> Int32 {
        if fd >= base { temps.append(fd); return fd }
        let h = Int32(try leader.call(.fcntl, UInt64(fd), 1030 /* F_DUPFD_CLOEXEC */, UInt64(base), what: "moving fd \(fd)"))
        _ = try leader.raw(.close, UInt64(fd))
        temps.append(h)
        return h
    }

    private mutating func open(_ path: String, _ flags: Int32, mode: UInt32 = 0) throws -> Int32 {
        scratch.reset()
        let name = try scratch.put(string: path)
        let fd = try access.asProcess(path: path) {
            try leader.call(.openat, UInt64(bitPattern: -100), name, UInt64(UInt32(bitPattern: flags | O_CLOEXEC)), UInt64(mode),
                            what: "opening \(path)")
        }
        return try high(Int32(fd))
    }

    /// `fd` (just opened for `s`) if the file it names is of the kind the image says `s` was:
    /// an image that calls a file a device (or a FIFO) cannot make wb treat it as one.
    private func checked(_ fd: Int32, _ s: FDState, _ kind: String, _ ok: (FileDescriptor.Status) -> Bool) throws -> Int32 {
        guard let st = try? Paths.stat("/proc/\(tracee.pid)/fd/\(fd)"), ok(st) else {
            throw WBError.refused("fd \(s.fd) was \(kind) at \(s.path), and what is there now is not")
        }
        return fd
    }

    /// The source for `s`, shared with the fds (of this process or another of the tree) that
    /// had the same open file description.
    private mutating func sharedSource(for s: FDState) throws -> Int32 {
        guard let d = s.description else { return try source(for: s) }
        let key = "description:\(d)"
        if let fd = try shared.fetch(key, into: leader, above: base) { return try high(fd) }
        let fd = try source(for: s)
        try shared.keep(key, fd: fd, leader: leader, pid: process.pid, above: base)
        return fd
    }

    /// An fd at a high number holding the open file description `s` needs.
    private mutating func source(for s: FDState) throws -> Int32 {
        switch s.kind {
        case .file:
            let flags = s.flags & ~(O_CREAT | O_TRUNC | O_EXCL)
            if s.deleted == true, let object = s.object {
                let removed = DeletedDirectory(mode: s.mode, owner: s.owner ?? [], object: object)
                return try reopen(try deletedDirectory(s.path, removed, holder: "fd \(s.fd)"), flags)
            }
            do {
                let fd = try checked(try open(s.path, flags), s, "a regular file or directory") { $0.isRegular || $0.mode & S_IFMT == S_IFDIR }
                if let then = s.filesystem, let now = Filesystems.magic("/proc/\(tracee.pid)/fd/\(fd)"), !Filesystems.sameKind(then, now) {
                    throw WBError.refused("fd \(s.fd) was a file on \(Filesystems.name(then)) at \(s.path), and what is there now is on \(Filesystems.name(now)): it is not the same object")
                }
                // A run that must not write the user's files gets a copy of one it may write
                // (opened above as the process would, so only what it may open is copied).
                guard let copies = restorer.privateCopies, s.accessMode != O_RDONLY,
                      (try? Paths.stat(s.path))?.isRegular == true else { return fd }
                return try open(try copies.make(s.path), flags)
            } catch let WBError.system(_, code, _) where code == ENOENT {
                throw WBError.failed("\(s.path) no longer exists; restore needs it (it was open on fd \(s.fd))")
            }
        case .deletedFile:
            return try deletedFile(s)
        case .pipe:
            return try pipe(s)
        case .fifo:
            return try fifo(s)
        case .device:
            return try checked(try open(s.path, s.flags & ~(O_CREAT | O_TRUNC | O_EXCL)), s, "a character device") { $0.isCharDevice }
        case .tty:
            if let fd = inherited[s.fd] { return fd }
            for k: Int32 in 0...2 where isatty(k) == 1 { if let fd = inherited[k] { return fd } }
            restorer.note("fd \(s.fd) was the terminal \(s.path); there is no terminal here, so it is /dev/null", about: process)
            return try open("/dev/null", O_RDWR)
        case .fanotify:
            return try fanotify(s)
        case .ptyMaster:
            guard let pty = s.pty else { throw WBError.badImage(path: restorer.image.path, problem: "fd \(s.fd) is a pseudo-terminal master without its state") }
            return try ptyMaster(pty.index).fd
        case .ptySlave:
            guard let index = s.ptyIndex else { throw WBError.badImage(path: restorer.image.path, problem: "fd \(s.fd) is a pseudo-terminal without its number") }
            return try ptyTerminal(index, flags: s.flags)
        case .placeholder:
            return try placeholder(s)
        case .mqueue:
            return try messageQueue(s)
        case .eventfd:
            let e = s.eventfd ?? EventFDState(count: 0, semaphore: false)
            return try high(Int32(try leader.call(.eventfd2, e.count, e.semaphore ? 1 : 0, what: "creating an eventfd")))
        case .timerfd:
            return try timerfd(s)
        case .signalfd:
            scratch.reset()
            let mask = try scratch.put(words: [s.signalfdMask ?? 0])
            return try high(Int32(try leader.call(.signalfd4, UInt64(bitPattern: -1), mask, 8, 0, what: "creating a signalfd")))
        case .epoll:
            return try high(Int32(try leader.call(.epollCreate1, 0, what: "creating an epoll instance")))
        case .unixSocket:
            return try socket(s)
        case .socket:
            return try netSocket(s)
        case .inotify:
            return try inotify(s)
        case .pidfd:
            // The process and the rest of its tree keep their pids: the same number names
            // the same process in the restored process's pid namespace.
            let target = s.pidfdTarget ?? 0
            let flags = UInt64(UInt32(bitPattern: s.flags & (O_NONBLOCK | O_EXCL /* PIDFD_THREAD */)))
            return try high(Int32(try leader.call(.pidfdOpen, UInt64(UInt32(bitPattern: target)), flags, what: "opening a pidfd of pid \(target)")))
        }
    }

    /// One end of a Unix socket pair: taken from the process that made the pair, or made
    /// here, each end given the bytes (or messages) that were queued on it, then what else
    /// the end held (options, a filter, directions shut down).
    private mutating func socket(_ s: FDState) throws -> Int32 {
        guard let sock = s.socket else { throw WBError.failed("fd \(s.fd): the image has no record of its socket") }
        let a: Int32
        if let fd = try shared.fetch("socket:\(sock.inode)", into: leader, above: base) {
            a = try high(fd)
        } else {
            let (a0, b0) = try makePair(s, sock)
            a = try high(a0)
            let b = try high(b0)
            // Bytes queued on one end were sent from the other.
            try SocketBuilder.refill(try take(b), bytes: sock.queued, messages: sock.messages ?? [])
            let peer = shared.socketQueues[sock.peer]
            try SocketBuilder.refill(try take(a), bytes: peer?.bytes ?? Data(), messages: peer?.messages ?? [])
            try shared.keep("socket:\(sock.inode)", fd: a, leader: leader, pid: process.pid, above: base)
            try shared.keep("socket:\(sock.peer)", fd: b, leader: leader, pid: process.pid, above: base)
        }
        if let net = s.net {
            let copy = try take(a)
            try restorer.sockets.finishPairEnd(copy, net)
            notePeerCredentials(s, net, copy)
            let names = [net.local, net.peer].compactMap { $0 }.filter { !$0.host.isEmpty }
            if !names.isEmpty && !namedPairs.contains(sock.inode) {
                restorer.note("fd \(s.fd) (\(SocketBuilder.name(net))) comes back as one end of a socket pair: its connection and queued bytes are kept, its name\(names.count == 1 ? "" : "s") (\(names.map(\.description).joined(separator: ", "))) no longer show in getsockname/getpeername", about: process)
            }
        }
        return a
    }

    /// The two ends of a pair, `s`'s first. A connection the image's process accepted on a
    /// listener it still has (names on both ends: the listener's path) is made again the same
    /// way, connect and accept, so getsockname and getpeername tell what they told; any other
    /// is a socketpair. Made as the process: each end's peer credentials are its maker's.
    private mutating func makePair(_ s: FDState, _ sock: SocketState) throws -> (Int32, Int32) {
        let listenerName = [s.net?.local, s.net?.peer].compactMap { $0 }.first { !$0.host.isEmpty }
        func same(_ a: SocketAddress?, _ b: SocketAddress) -> Bool { a.map { $0.host == b.host && ($0.abstract == true) == (b.abstract == true) } ?? false }
        if let name = listenerName, let listener = listeners.first(where: { same($0.name, name) }), sock.type != Int32(SOCK_DGRAM.rawValue) {
            let accepted = same(s.net?.local, name)
            let raw = try name.encode(family: AF_UNIX)
            let (client, server): (Int64, Int64) = try access.asProcessIdentity {
                let c = try Int64(leader.call(.socket, 1, UInt64(UInt32(bitPattern: sock.type)) | UInt64(O_CLOEXEC), 0, what: "creating the client end of fd \(s.fd)"))
                scratch.reset()
                let at = try scratch.put(raw)
                try leader.call(.connect, UInt64(c), at, UInt64(raw.count), what: "connecting fd \(s.fd)'s client end to \(name)")
                let a = try Int64(leader.call(.accept4, UInt64(listener.fd), 0, 0, UInt64(O_CLOEXEC), what: "accepting fd \(s.fd)'s connection on \(name)"))
                return (c, a)
            }
            namedPairs.insert(sock.inode)
            namedPairs.insert(sock.peer)
            return accepted ? (Int32(server), Int32(client)) : (Int32(client), Int32(server))
        }
        scratch.reset()
        let pair = try scratch.reserve(8)
        try access.asProcessIdentity {
            try leader.call(.socketpair, 1 /* AF_UNIX */, UInt64(UInt32(bitPattern: sock.type)) | UInt64(O_CLOEXEC), 0, pair,
                            what: "creating the socket pair of fd \(s.fd)")
        }
        return try readPair(pair)
    }

    /// An fd wb could not save (`--allow-unsupported`) is one the program can still hold,
    /// watch and close: a socket's is an unconnected Unix socket of its type (socket calls
    /// work on it, epoll can watch it, a stream one reports a hang-up); another watched by an
    /// epoll set is an eventfd that never becomes ready; the rest are /dev/null.
    private mutating func placeholder(_ s: FDState) throws -> Int32 {
        if let net = s.net {
            let type = [stream, dgram, seqpacket].contains(net.type) ? net.type : dgram
            return try high(Int32(try leader.call(.socket, 1 /* AF_UNIX */, UInt64(UInt32(bitPattern: type)) | UInt64(O_CLOEXEC), 0,
                                                  what: "creating the placeholder of fd \(s.fd)")))
        }
        if process.fds.contains(where: { $0.epoll?.contains { $0.fd == s.fd || $0.twin == s.fd } == true }) {
            return try high(Int32(try leader.call(.eventfd2, 0, 0, what: "creating the placeholder of fd \(s.fd)")))
        }
        return try open("/dev/null", O_RDWR)
    }

    /// Binding a Unix socket to a path makes a file, and unlinking one removes it: both are
    /// done by the process, with its rights (an image cannot make wb create or remove files
    /// where its process could not).
    private func pathCalls(_ fd: Int32) -> SocketBuilder.PathCalls {
        SocketBuilder.PathCalls(bind: { [leader, scratch, access] address in
            scratch.reset()
            let raw = try scratch.put(try address.encode(family: AF_UNIX))
            let size = UInt64(try address.encode(family: AF_UNIX).count)
            let r = try access.asProcess(path: address.host) { try leader.raw(.bind, UInt64(fd), raw, size) }
            return r < 0 ? Int32(-r) : 0
        }, unlink: { [leader, scratch, access] path in
            scratch.reset()
            let name = try scratch.put(string: path)
            let r = try access.asProcess(path: path) { try leader.raw(.unlinkat, UInt64(bitPattern: -100), name, 0) }
            if r < 0 && r != -Int64(ENOENT) { throw WBError.system(call: "remote unlink", errno: Int32(-r), what: "removing \(path)") }
        }, unlinkLater: { [restorer, leader, scratch, access] path in
            restorer.unlinkLater.append((path, leader, scratch, access))
        }, listen: { [leader, access] backlog in
            let r = try access.asProcessIdentity { try leader.raw(.listen, UInt64(fd), UInt64(UInt32(bitPattern: backlog))) }
            return r < 0 ? Int32(-r) : 0
        }, connect: { [leader, scratch, access] address in
            scratch.reset()
            let raw = try address.encode(family: AF_UNIX)
            let at = try scratch.put(raw)
            let r = try access.asProcessIdentity { try access.asProcess(path: address.host) { try leader.raw(.connect, UInt64(fd), at, UInt64(raw.count)) } }
            return r < 0 ? Int32(-r) : 0
        })
    }

    /// A Unix connection's peer credentials (SO_PEERCRED) are its maker's, as of when it was
    /// made: one the image's process made itself comes back as it was; one made by a process
    /// not restored with it (a parent outside the image, wb connecting a client) cannot, and
    /// is noted.
    private func notePeerCredentials(_ s: FDState, _ net: NetSocketState, _ copy: FileDescriptor) {
        guard let was = net.peerCredentials, let now = SocketProbe.peerCredentials(copy.rawValue), was != now else { return }
        restorer.note("fd \(s.fd) (\(SocketBuilder.name(net))): its peer credentials (SO_PEERCRED) are pid \(now[0]), uid \(now[1]), gid \(now[2]); the image's were pid \(was[0]), uid \(was[1]), gid \(was[2])", about: process)
    }

    /// An inotify instance with its watches under the descriptors the process knows them
    /// by: the kernel numbers a new instance's watches 1, 2, ... and never reuses a number,
    /// so each number before one that was taken is used up by a watch added and removed
    /// again. Paths are looked up as the process would (FileAccess).
    private mutating func inotify(_ s: FDState) throws -> Int32 {
        let fd = try high(Int32(try leader.call(.inotifyInit1, UInt64(O_CLOEXEC), what: "creating the inotify instance of fd \(s.fd)")))
        var next: Int32 = 1
        for w in (s.inotify ?? []).sorted(by: { $0.wd < $1.wd }) {
            scratch.reset()
            let name = try scratch.put(string: w.path)
            var skipped: [(SyscallNumber, [UInt64])] = []
            for wd in next..<max(next, w.wd) {
                skipped.append((.inotifyAddWatch, [UInt64(fd), name, UInt64(w.mask)]))
                skipped.append((.inotifyRmWatch, [UInt64(fd), UInt64(wd)]))
            }
            if !skipped.isEmpty {
                let results = try access.asProcess(path: w.path) { try scratch.batch(skipped, leader: leader) }
                if let bad = results.first(where: { $0 < 0 }) {
                    throw WBError.system(call: "remote inotify_add_watch", errno: Int32(-bad), what: "numbering the watches of fd \(s.fd)")
                }
                // Each removal queued an IN_IGNORED event the process never had: read away.
                let copy = try take(fd)
                if copy.queuedBytes > 0 {
                    var sink = [UInt8](repeating: 0, count: copy.queuedBytes)
                    _ = Glibc.read(copy.rawValue, &sink, sink.count)
                }
            }
            let r = try access.asProcess(path: w.path) { try leader.raw(.inotifyAddWatch, UInt64(fd), name, UInt64(w.mask)) }
            if r < 0 {
                if r == -Int64(ENOENT) { throw WBError.failed("\(w.path) no longer exists; restore needs it (inotify fd \(s.fd) watches it as \(w.wd))") }
                throw WBError.system(call: "remote inotify_add_watch", errno: Int32(-r), what: "watching \(w.path) with fd \(s.fd)")
            }
            guard Int32(r) == w.wd else {
                throw WBError.failed("inotify fd \(s.fd): \(w.path) was given watch \(r) instead of \(w.wd) (is it the same file as another watch's?)")
            }
            next = Int32(r) + 1
        }
        return fd
    }

    /// A fanotify group with its settings and marks (each mark's event mask, then its ignore
    /// mask, as the kind of ignore mask it had), made as the process.
    private mutating func fanotify(_ s: FDState) throws -> Int32 {
        guard let g = s.fanotify else { throw WBError.badImage(path: restorer.image.path, problem: "fd \(s.fd) is a fanotify group without its state") }
        let fd = try high(Int32(try leader.call(.fanotifyInit, UInt64(g.flags | 1 /* FAN_CLOEXEC */), UInt64(g.eventFlags),
                                                 what: "creating the fanotify group of fd \(s.fd)")))
        for m in g.marks {
            scratch.reset()
            let name = try scratch.put(string: m.path)
            let type: UInt64 = m.kind == .mount ? 0x10 /* FAN_MARK_MOUNT */ : m.kind == .filesystem ? 0x100 /* FAN_MARK_FILESYSTEM */ : 0
            var adds: [(flags: UInt64, mask: UInt64)] = []
            if m.mask != 0 || m.ignoredMask == 0 { adds.append((0x1 /* FAN_MARK_ADD */ | type | UInt64(m.flags & 0x200 /* FAN_MARK_EVICTABLE */), m.mask)) }
            if m.ignoredMask != 0 {
                // FAN_MARK_IGNORE (0x400) or the older FAN_MARK_IGNORED_MASK (0x20), with
                // FAN_MARK_IGNORED_SURV_MODIFY (0x40) as it was.
                let ignore: UInt64 = m.flags & 0x400 != 0 ? 0x400 : 0x20
                adds.append((0x1 | type | ignore | UInt64(m.flags & 0x240), m.ignoredMask))
            }
            for add in adds {
                let r = try access.asProcess(path: m.path) {
                    try leader.raw(.fanotifyMark, UInt64(fd), add.flags, add.mask, UInt64(bitPattern: -100), name)
                }
                if r == -Int64(ENOENT) { throw WBError.failed("\(m.path) no longer exists; restore needs it (fanotify fd \(s.fd) marks it)") }
                if r < 0 { throw WBError.system(call: "remote fanotify_mark", errno: Int32(-r), what: "marking \(m.path) with fanotify fd \(s.fd)") }
            }
        }
        return fd
    }

    /// A copy, in wb, of the process's fd `fd` (pidfd_getfd).
    private mutating func take(_ fd: Int32) throws -> FileDescriptor {
        if handle == nil { handle = try ProcessHandle(pid: tracee.pid) }
        return try handle!.take(fd)
    }

    /// Any other socket: made by the process (so it is in its network namespace and its
    /// own), then given its state from wb's side (SocketBuilder). A TCP connection stays in
    /// repair mode until the restore is done (Restorer.finishConnections).
    private mutating func netSocket(_ s: FDState) throws -> Int32 {
        guard let net = s.net else { throw WBError.failed("fd \(s.fd): the image has no record of its socket") }
        if net.family == AF_UNIX && net.state == .peerClosed { return try closedUnixSocket(s, net) }
        let fd = try premade.removeValue(forKey: s.fd)
            ?? high(Int32(try leader.call(.socket, UInt64(UInt32(bitPattern: net.family)),
                                          UInt64(UInt32(bitPattern: net.type)) | UInt64(O_CLOEXEC), UInt64(UInt32(bitPattern: net.proto)),
                                          what: "creating \(SocketBuilder.name(net))")))
        let built: (notes: [String], pending: SocketBuilder.Pending?)
        if let done = prebuilt.removeValue(forKey: s.fd) {
            built = try done.get()
        } else {
            let policy = try restorer.tcpPolicy(for: net, name: SocketBuilder.name(net))
            let copy = try take(fd)
            built = try withContext("restoring fd \(s.fd) (\(SocketBuilder.name(net)))") {
                try restorer.sockets.build(copy, net, tcp: policy, paths: pathCalls(fd))
            }
        }
        let (notes, pending) = built
        for n in notes { restorer.note(n, about: process) }
        if net.family == AF_UNIX, net.peerCredentials != nil { notePeerCredentials(s, net, try take(fd)) }
        if let pending { restorer.pendingConnections.append(pending) }
        return fd
    }

    /// A Unix stream or seqpacket socket whose peer was outside the image: one end of a new
    /// pair whose other end wb fills with the bytes that were queued and closes, so the
    /// process reads them and then end of file, as after the peer's exit.
    private mutating func closedUnixSocket(_ s: FDState, _ net: NetSocketState) throws -> Int32 {
        scratch.reset()
        let pair = try scratch.reserve(8)
        try leader.call(.socketpair, 1 /* AF_UNIX */, UInt64(UInt32(bitPattern: net.type)) | UInt64(O_CLOEXEC), 0, pair,
                        what: "creating the socket of fd \(s.fd)")
        let (a0, b0) = try readPair(pair)
        let a = try high(a0), b = try high(b0)
        let other = try take(b)
        _ = try leader.raw(.close, UInt64(b))
        temps.removeAll { $0 == b }
        try SocketBuilder.refill(other, bytes: net.queued ?? Data(), messages: (net.datagrams ?? []).map(\.bytes))
        other.close()
        try restorer.sockets.finishPairEnd(try take(a), net)
        let queued = net.queued?.count ?? net.datagrams?.reduce(0) { $0 + $1.bytes.count } ?? 0
        restorer.note("fd \(s.fd) (\(SocketBuilder.name(net))) was connected to a process outside the image: restored with that peer gone (the process reads \(queued) queued byte\(queued == 1 ? "" : "s"), then end of file)", about: process)
        return a
    }

    private func readPair(_ at: UInt64) throws -> (Int32, Int32) {
        let w = try tracee.read(at, count: 8)
        return (Int32(w[0]) | Int32(w[1]) << 8 | Int32(w[2]) << 16 | Int32(w[3]) << 24,
                Int32(w[4]) | Int32(w[5]) << 8 | Int32(w[6]) << 16 | Int32(w[7]) << 24)
    }

    private mutating func timerfd(_ s: FDState) throws -> Int32 {
        let t = s.timerfd ?? TimerFDState(clock: 1, ticks: 0, valueNanoseconds: 0, intervalNanoseconds: 0)
        let fd = try high(Int32(try leader.call(.timerfdCreate, UInt64(t.clock), 0, what: "creating a timerfd")))
        // A periodic timer that expired and was not read yet shows no time left; the kernel
        // re-arms it on the next read. Its next expiration is a period away.
        var value = t.valueNanoseconds > 0 ? t.valueNanoseconds : t.intervalNanoseconds
        var flags: UInt64 = 0
        if let at = t.absoluteNanoseconds, let f = t.settimeFlags {
            // An absolute wall-clock timer: armed for its moment, with its flags (a timer that
            // is cancelled when the clock is set stays so).
            value = at
            flags = UInt64(f & 3)
        }
        if value > 0 {
            scratch.reset()
            let spec = try scratch.put(words: [t.intervalNanoseconds / 1_000_000_000, t.intervalNanoseconds % 1_000_000_000,
                                               value / 1_000_000_000, value % 1_000_000_000])
            try leader.call(.timerfdSettime, UInt64(fd), flags, spec, 0, what: "arming a timerfd")
        }
        if t.ticks > 0 {
            // Expirations nobody has read yet (TFD_IOC_SET_TICKS).
            scratch.reset()
            let ticks = try scratch.put(words: [t.ticks])
            try leader.call(.ioctl, UInt64(fd), 0x40085400, ticks, what: "setting the expirations of a timerfd")
        }
        return fd
    }

    private mutating func deletedFile(_ s: FDState) throws -> Int32 {
        guard let hash = s.content, let file = restorer.image.metadata.file(hash) else {
            throw WBError.failed("the image lacks the contents of deleted file \(s.path)")
        }
        let key = shared.fileKey(identity: s.object, content: hash)
        if sharedObjects[key] == nil, let fd = try shared.fetch(key, into: leader, above: base) {
            sharedObjects[key] = try high(fd)
        }
        if let object = sharedObjects[key] {
            // The same object is mapped shared, here or in another process of the tree: share it.
            return try reopen(object, s.flags)
        }
        var fd: Int32
        if s.path.hasPrefix("/memfd:") {
            scratch.reset()
            let name = try scratch.put(string: String(s.path.dropFirst(7).prefix(200)))
            let flags: UInt64 = s.seals != nil ? 1 | 2 : 1   // MFD_CLOEXEC, MFD_ALLOW_SEALING
            fd = try high(Int32(try leader.call(.memfdCreate, name, flags, what: "creating memfd \(s.path)")))
        } else {
            // An unnamed file in the original directory (or /tmp): deleted, as it was.
            let dir = Paths.directory(of: s.path)
            let tmpfile = O_RDWR | 0o20200000   // O_TMPFILE
            do {
                fd = try open(Paths.exists(dir) ? dir : "/tmp", tmpfile, mode: s.mode)
            } catch {
                fd = try open("/tmp", tmpfile, mode: s.mode)
            }
        }
        let out = try FileDescriptor.open("/proc/\(tracee.pid)/fd/\(fd)", O_RDWR, what: "filling deleted file \(s.path)")
        try restorer.image.contents(of: file).withBytes { bytes in
            guard let extents = s.extents else { return try out.write(bytes, at: 0) }
            // Only the data: the rest stays holes, as it was.
            try out.truncate(to: UInt64(bytes.count))
            for e in extents where e.count == 2 && e[0] < e[1] && e[1] <= UInt64(bytes.count) {
                try out.write(UnsafeRawBufferPointer(rebasing: bytes[Int(e[0])..<Int(e[1])]), at: e[0])
            }
        }
        try attributes(of: s, fd: fd, out: out)
        sharedObjects[key] = fd
        try shared.keep(key, fd: fd, leader: leader, pid: process.pid, above: base)
        return try reopen(fd, s.flags)
    }

    /// A POSIX message queue. One that still exists under its name is opened, as a file on
    /// disk would be: it is the live queue the process shares with others (its limits must be
    /// the image's; messages it holds that the image did not are noted). One that does not is
    /// made again with the image's limits, messages, mode and owner; a removed one is made,
    /// opened and removed again. Opened as the process, with its access mode.
    private mutating func messageQueue(_ s: FDState) throws -> Int32 {
        guard let q = s.mqueue else { throw WBError.badImage(path: restorer.image.path, problem: "fd \(s.fd) is a message queue without its state") }
        let what = "the POSIX message queue /\(q.name) (fd \(s.fd))"
        let key = "mqueue:\(q.object)"
        if sharedObjects[key] == nil, let fd = try shared.fetch(key, into: leader, above: base) { sharedObjects[key] = try high(fd) }
        if let object = sharedObjects[key] { return try reopen(object, s.flags) }
        let flags = UInt64(UInt32(bitPattern: (s.flags & (O_ACCMODE | O_NONBLOCK)) | O_CLOEXEC))
        func openByName(_ name: String) throws -> Int64 {
            scratch.reset()
            let at = try scratch.put(string: name)
            return try access.asProcess(path: "/dev/mqueue/\(name)") { try leader.raw(.mqOpen, at, flags, 0, 0) }
        }
        if q.deleted != true {
            let r = try openByName(q.name)
            if r >= 0 {
                let fd = try high(Int32(r))
                let (maxMessages, size, queued) = try MessageQueues.attributes(try take(fd))
                if maxMessages != q.maxMessages || size != q.messageSize {
                    throw WBError.refused("\(what) exists here holding up to \(maxMessages) messages of \(size) bytes, and the image's held up to \(q.maxMessages) of \(q.messageSize): remove it (rm /dev/mqueue/\(q.name), with the mqueue filesystem mounted there) to have it made from the image")
                }
                if queued != Int64(q.messages.count) {
                    restorer.note("\(what) exists here and holds \(queued) message\(queued == 1 ? "" : "s") (the image's held \(q.messages.count)); the process uses the queue that is here", about: process)
                }
                return fd
            }
            if r != -Int64(ENOENT) { throw WBError.system(call: "remote mq_open(/\(q.name))", errno: Int32(-r), what: "opening \(what)") }
        }
        // Made again: under its name, or for a removed one a free name (removed at once).
        var name = q.name
        var made = try create(q, name: name, what: what)
        if made == -Int64(EEXIST) && q.deleted == true {
            name = "wb-\(process.pid)-\(s.fd)-\(UInt32.random(in: 0...UInt32.max))"
            made = try create(q, name: name, what: what)
        }
        if made < 0 { throw WBError.system(call: "remote mq_open(/\(name), O_CREAT)", errno: Int32(-made), what: "making \(what) again") }
        let object = try high(Int32(made))
        let out = try FileDescriptor.open("/proc/\(tracee.pid)/fd/\(object)", O_WRONLY | O_NONBLOCK, what: "filling \(what)")
        try MessageQueues.send(out, q.messages.map { ($0.priority, [UInt8]($0.bytes)) }, what: what)
        _ = try leader.raw(.fchmod, UInt64(object), UInt64(q.mode & 0o7777))
        if q.owner.count == 2 {
            let r = try leader.raw(.fchown, UInt64(object), UInt64(q.owner[0]), UInt64(q.owner[1]))
            if r < 0 && (q.owner[0] != geteuid() || q.owner[1] != getegid()) {
                restorer.note("\(what) belonged to uid \(q.owner[0]) gid \(q.owner[1]); here it is wb's user's (\(WBError.errnoText(Int32(-r))))", about: process)
            }
        }
        if q.deleted == true {
            sharedObjects[key] = object
            try shared.keep(key, fd: object, leader: leader, pid: process.pid, above: base)
            let fd = try reopen(object, s.flags)
            scratch.reset()
            let at = try scratch.put(string: name)
            try leader.call(.mqUnlink, at, what: "removing \(what) again")
            if name != q.name {
                restorer.note("\(what), removed while open, was made again as /\(name) and removed (its name is taken here)", about: process)
            }
            return fd
        }
        _ = try leader.raw(.close, UInt64(object))
        temps.removeAll { $0 == object }
        let r = try openByName(name)
        if r < 0 { throw WBError.system(call: "remote mq_open(/\(name))", errno: Int32(-r), what: "opening \(what)") }
        return try high(Int32(r))
    }

    /// mq_open(O_CREAT | O_EXCL) of `name` with the queue's limits, as the process (its
    /// user owns the queue, and the kernel's limits for it apply); the result or -errno.
    private func create(_ q: MessageQueueState, name: String, what: String) throws -> Int64 {
        scratch.reset()
        let at = try scratch.put(string: name)
        // struct mq_attr: mq_flags, mq_maxmsg, mq_msgsize, mq_curmsgs, 4 reserved.
        let attr = try scratch.put(words: [0, UInt64(q.maxMessages), UInt64(q.messageSize), 0, 0, 0, 0, 0])
        let r = try access.asProcessIdentity {
            try leader.raw(.mqOpen, at, UInt64(UInt32(bitPattern: O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC)), UInt64(q.mode & 0o777), attr)
        }
        if r == -Int64(EINVAL) || r == -Int64(EMFILE) || r == -Int64(ENOMEM) {
            let max = (try? Paths.readText("/proc/sys/fs/mqueue/msg_max"))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            let size = (try? Paths.readText("/proc/sys/fs/mqueue/msgsize_max"))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            throw WBError.refused("\(what) cannot be made again here with room for \(q.maxMessages) messages of \(q.messageSize) bytes (\(WBError.errnoText(Int32(-r)))): this host allows \(max) messages of \(size) bytes (sysctl fs.mqueue.msg_max and fs.mqueue.msgsize_max) and the user's RLIMIT_MSGQUEUE bounds their bytes")
        }
        return r
    }

    /// A deleted file's mode, owner, modification time and seals, once its bytes are in.
    private func attributes(of s: FDState, fd: Int32, out: FileDescriptor) throws {
        _ = try leader.raw(.fchmod, UInt64(fd), UInt64(s.mode & 0o7777))
        if let owner = s.owner, owner.count == 2 {
            let r = try leader.raw(.fchown, UInt64(fd), UInt64(owner[0]), UInt64(owner[1]))
            if r < 0 && (owner[0] != geteuid() || owner[1] != getegid()) {
                restorer.note("deleted file \(s.path) belonged to uid \(owner[0]) gid \(owner[1]); here it is wb's user's (\(WBError.errnoText(Int32(-r))))", about: process)
            }
        }
        if let m = s.mtime, m.count == 2 {
            var times = [timespec(tv_sec: 0, tv_nsec: (1 << 30) - 2 /* UTIME_OMIT */), timespec(tv_sec: Int(m[0]), tv_nsec: Int(m[1]))]
            _ = futimens(out.rawValue, &times)
        }
        if let seals = s.seals, seals != 0 {
            let r = try leader.raw(.fcntl, UInt64(fd), 1033 /* F_ADD_SEALS */, UInt64(seals))
            if r < 0 { restorer.note("memfd \(s.path) had seals 0x\(String(seals, radix: 16)); adding them here failed (\(WBError.errnoText(Int32(-r))))", about: process) }
        }
    }

    /// A new open file description of the same file with `flags` (access mode, O_APPEND...).
    /// O_NOFOLLOW is left out: /proc/self/fd/N is itself a link, to a file already found (the
    /// program's own O_NOFOLLOW open had succeeded, so its path was no link), and the flag
    /// only governs that lookup.
    private mutating func reopen(_ fd: Int32, _ flags: Int32) throws -> Int32 {
        try open("/proc/self/fd/\(fd)", flags & ~(O_CREAT | O_TRUNC | O_EXCL | O_NOFOLLOW))
    }

    private mutating func pipe(_ s: FDState) throws -> Int32 {
        guard let id = s.pipe, let state = process.pipes.first(where: { $0.id == id }) else {
            throw WBError.failed("fd \(s.fd): the image has no record of pipe \(s.pipe ?? 0)")
        }
        let wantsRead = s.accessMode == O_RDONLY
        if state.external {
            if let src = externalSources[id] { return src }
            if !wantsRead {
                restorer.note("fd \(s.fd) wrote to a pipe outside the process; it writes to /dev/null now", about: process)
                return try open("/dev/null", O_WRONLY)
            }
            restorer.note("fd \(s.fd) read from a pipe outside the process; it reads the \(state.buffered.count) buffered bytes, then end of file", about: process)
        }
        if pipeEnds[id] == nil, let r = try shared.fetch("pipe:\(id):read", into: leader, above: base) {
            // Made by another process of the tree.
            let wr = try shared.fetch("pipe:\(id):write", into: leader, above: base)
            pipeEnds[id] = (try high(r), try wr.map { try high($0) } ?? -1)
        }
        if pipeEnds[id] == nil {
            scratch.reset()
            let pair = try scratch.reserve(8)
            try leader.call(.pipe2, pair, UInt64(O_CLOEXEC), what: "creating pipe \(id)")
            let (r0, w0) = try readPair(pair)
            let r = try high(r0), wr = try high(w0)
            try fill(pipe: wr, with: state)
            try shared.keep("pipe:\(id):read", fd: r, leader: leader, pid: process.pid, above: base)
            if state.external {
                // The writer is gone: the reader gets the bytes, then end of file.
                temps.removeAll { $0 == wr }
                _ = try leader.raw(.close, UInt64(wr))
            } else {
                try shared.keep("pipe:\(id):write", fd: wr, leader: leader, pid: process.pid, above: base)
            }
            pipeEnds[id] = (r, wr)
        }
        return wantsRead ? pipeEnds[id]!.read : pipeEnds[id]!.write
    }

    private func fill(pipe fd: Int32, with state: PipeState) throws {
        let out = try FileDescriptor.open("/proc/\(tracee.pid)/fd/\(fd)", O_WRONLY | O_NONBLOCK, what: "filling pipe \(state.id)")
        if state.capacity > 0 { try? Pipes.setCapacity(out, state.capacity) }
        if !state.buffered.isEmpty {
            try out.writeAll([UInt8](state.buffered))
        }
    }

    private mutating func fifo(_ s: FDState) throws -> Int32 {
        guard let id = s.pipe else { return try open(s.path, s.flags) }
        if s.deleted == true { return try deletedFIFO(s, id) }
        if pipeEnds[id] == nil {
            // Holding both ends first means neither open blocks and the buffer has a home.
            let holder = try checked(try open(s.path, O_RDWR | O_NONBLOCK), s, "a FIFO") { $0.isFIFO }
            if let state = process.pipes.first(where: { $0.id == id }) { try fill(pipe: holder, with: state) }
            pipeEnds[id] = (holder, holder)
        }
        return try open(s.path, (s.flags & ~(O_CREAT | O_TRUNC | O_EXCL)) | O_NONBLOCK)
    }

    /// A FIFO whose name was gone: made again at its name (or, where that is taken or its
    /// directory is gone, under /tmp, with a note), opened by every fd that had it, and
    /// unlinked once they all have it.
    private mutating func deletedFIFO(_ s: FDState, _ id: UInt64) throws -> Int32 {
        let key = "deleted-fifo:\(id)"
        if let fd = try shared.fetch(key, into: leader, above: base) {
            // Another fd or process already made it: reopen that FIFO through it.
            return try reopen(try high(fd), s.flags | O_NONBLOCK)
        }
        if pipeEnds[id] == nil {
            var path = s.path
            scratch.reset()
            let mode = UInt64(S_IFIFO) | UInt64(s.mode & 0o777 == 0 ? 0o600 : s.mode & 0o777)
            var made = try access.asProcess(path: path) {
                try leader.raw(.mknodat, UInt64(bitPattern: -100), try scratch.put(string: path), mode, 0)
            }
            if made < 0 {
                path = "/tmp/.wb-fifo-\(tracee.pid)-\(s.fd)"
                scratch.reset()
                made = try access.asProcess(path: path) {
                    try leader.raw(.mknodat, UInt64(bitPattern: -100), try scratch.put(string: path), mode, 0)
                }
                restorer.note("fd \(s.fd) was the deleted FIFO \(s.path); that name is taken here, so it is a FIFO made (and deleted) at \(path)", about: process)
            }
            if made < 0 { throw WBError.system(call: "remote mknodat(\(path))", errno: Int32(-made), what: "making the deleted FIFO of fd \(s.fd) again") }
            let holder = try open(path, O_RDWR | O_NONBLOCK)
            scratch.reset()
            _ = try leader.raw(.unlinkat, UInt64(bitPattern: -100), try scratch.put(string: path), 0)
            if let state = process.pipes.first(where: { $0.id == id }) { try fill(pipe: holder, with: state) }
            try shared.keep(key, fd: holder, leader: leader, pid: process.pid, above: base)
            pipeEnds[id] = (holder, holder)
        }
        // A new open file description of it with `s`'s access (it has no name: through
        // /proc/self/fd), not blocking on a missing other end.
        return try reopen(pipeEnds[id]!.read, s.flags | O_NONBLOCK)
    }

    /// A directory that was removed while held (open, or as the working directory): made
    /// again at its name (or, where that is taken or its parent is gone, under /tmp, with a
    /// note) with its mode and owner, opened, and removed once open; every fd and working
    /// directory of the same object, in this process or another of the tree, is that one.
    /// Returns an fd of it at a high number.
    private mutating func deletedDirectory(_ original: String, _ d: DeletedDirectory, holder: String) throws -> Int32 {
        let key = "deleted-dir:\(d.object)"
        if let fd = try shared.fetch(key, into: leader, above: base) { return try high(fd) }
        func make(_ path: String) throws -> Int64 {
            scratch.reset()
            let name = try scratch.put(string: path)
            return try access.asProcess(path: path) { try leader.raw(.mkdirat, UInt64(bitPattern: -100), name, 0o700) }
        }
        var path = original
        var made = try make(path)
        if made < 0 {
            path = "/tmp/.wb-dir-\(tracee.pid)-\(d.object.filter(\.isNumber))"
            made = try make(path)
            restorer.note("the deleted directory \(original) (deleted) (\(holder)) cannot be made at its name here: it is a directory made (and removed) at \(path)", about: process)
        }
        if made < 0 { throw WBError.system(call: "remote mkdirat(\(path))", errno: Int32(-made), what: "making the deleted directory of \(holder) again") }
        let fd = try open(path, O_RDONLY | O_DIRECTORY)
        _ = try leader.raw(.fchmod, UInt64(fd), UInt64(d.mode & 0o7777))
        if d.owner.count == 2 {
            let r = try leader.raw(.fchown, UInt64(fd), UInt64(d.owner[0]), UInt64(d.owner[1]))
            if r < 0 && (d.owner[0] != geteuid() || d.owner[1] != getegid()) {
                restorer.note("deleted directory \(original) belonged to uid \(d.owner[0]) gid \(d.owner[1]); here it is wb's user's (\(WBError.errnoText(Int32(-r))))", about: process)
            }
        }
        scratch.reset()
        let removed = try leader.raw(.unlinkat, UInt64(bitPattern: -100), try scratch.put(string: path), UInt64(AT_REMOVEDIR))
        if removed < 0 { throw WBError.system(call: "remote rmdir(\(path))", errno: Int32(-removed), what: "removing the directory of \(holder) again") }
        try shared.keep(key, fd: fd, leader: leader, pid: process.pid, above: base)
        return fd
    }

    // MARK: Pseudo-terminal pairs

    /// The master of the image's pair `index`, made in this process (/dev/ptmx opened as the
    /// process, its pair given the image's terminal settings, window size, packet mode and
    /// lock), or taken from the process of the tree that made it; at a high number, with the
    /// pair's number here (a new pair gets the lowest free number: noted when it differs).
    private mutating func ptyMaster(_ index: Int32) throws -> (fd: Int32, here: Int32) {
        let key = "pty:\(index)"
        if let fd = try shared.fetch(key, into: leader, above: base) {
            let h = try high(fd)
            let copy = try take(h)
            return (h, try PseudoTerminals.read(master: copy.rawValue).index)
        }
        let image = restorer.image
        guard let state = image.metadata.processes.lazy.flatMap(\.fds).first(where: { $0.kind == .ptyMaster && $0.pty?.index == index })?.pty else {
            throw WBError.badImage(path: image.path, problem: "a terminal of pseudo-terminal pair \(index) is in the image and its master is not")
        }
        let fd = try open("/dev/ptmx", O_RDWR | O_NOCTTY)
        let copy = try take(fd)
        var pair = try PseudoTerminals.read(master: copy.rawValue)
        let here = pair.index
        pair.packet = state.packet; pair.termios = Array(state.termios); pair.winsize = state.winsize
        try PseudoTerminals.apply(pair, master: copy.rawValue, locked: state.locked)
        if here != index {
            restorer.note("the pseudo-terminal /dev/pts/\(index) is /dev/pts/\(here) here (a program that kept its name finds another)", about: process)
        }
        try shared.keep(key, fd: fd, leader: leader, pid: process.pid, above: base)
        return (fd, here)
    }

    /// A new open of the terminal side of the image's pair `index` with `flags`, at a high
    /// number (never becoming a controlling terminal by the open).
    private mutating func ptyTerminal(_ index: Int32, flags: Int32) throws -> Int32 {
        let (master, here) = try ptyMaster(index)
        let locked = restorer.image.metadata.processes.lazy.flatMap(\.fds).first { $0.kind == .ptyMaster && $0.pty?.index == index }?.pty?.locked == true
        let copy = locked ? try take(master) : nil
        if let copy { try PseudoTerminals.lock(master: copy.rawValue, false) }
        defer { if let copy { try? PseudoTerminals.lock(master: copy.rawValue, true) } }
        return try open("/dev/pts/\(here)", (flags & ~(O_CREAT | O_TRUNC | O_EXCL)) | O_NOCTTY)
    }

    /// A session leader whose controlling terminal was a pair of the image gets it again,
    /// with its foreground process group.
    private mutating func controllingTerminal() throws {
        guard let index = process.controllingPty, process.sid == process.pid else { return }
        let terminal = try ptyTerminal(index, flags: O_RDWR)
        try leader.call(.ioctl, UInt64(terminal), 0x540E /* TIOCSCTTY */, 0, what: "making /dev/pts/\(index) the controlling terminal again")
        if let group = process.foregroundGroup {
            scratch.reset()
            let at = try scratch.put(words32: [UInt32(bitPattern: group)])
            let r = try leader.raw(.ioctl, UInt64(terminal), 0x5410 /* TIOCSPGRP */, at)
            if r < 0 {
                restorer.note("process group \(group) was in the foreground of /dev/pts/\(index); here it cannot be (\(WBError.errnoText(Int32(-r))))", about: process)
            }
        }
    }
}
