import Foundation
import Glibc
import WBNet
import WBTrace

/// Decides which mapped files the image embeds, and embeds them once the pages are written.
struct FileEmbedder {
    let pid: Int32
    let writer: ImageWriter
    let embedLimit: UInt64
    let exe: String
    private var known: [String: FileIdentity] = [:]          // "device:inode"
    private var byPath: [String: String] = [:]
    private var pending: [(key: String, fd: FileDescriptor, path: String, code: Bool)] = []
    /// Contents of shared memory files (memfds, deleted files mapped shared), read while the
    /// process is stopped: it may change them as soon as it runs again.
    private var pendingBytes: [(key: String, bytes: [UInt8], path: String)] = []
    /// gdb scripts queued, by path.
    private var scripts: Set<String> = []
    var notes: [String] = []

    init(pid: Int32, writer: ImageWriter, embedLimit: UInt64, exe: String) {
        self.pid = pid; self.writer = writer; self.embedLimit = embedLimit; self.exe = exe
    }

    /// The identity of a mapped file; queues it for embedding when the image should carry it.
    mutating func identify(_ e: ProcFS.MapsEntry, path: String, deleted: Bool, code: Bool) throws -> FileIdentity {
        let key = "\(e.device):\(e.inode)"
        if let id = known[key] { return id }
        let mapFile = "/proc/\(pid)/map_files/\(String(e.start, radix: 16))-\(String(e.end, radix: 16))"
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(mapFile, O_RDONLY, what: "opening mapped file \(path)")
        } catch {
            fd = try FileDescriptor.open(path, O_RDONLY, what: "opening mapped file \(path)")
        }
        let st = try fd.stat()
        let id = FileIdentity(size: st.size, mtimeSeconds: st.mtimeSeconds, mtimeNanoseconds: st.mtimeNanoseconds,
                              device: st.device, inode: st.inode, content: nil)
        // A small file mapped shared (a JVM's perf data, a statistics file) is stored too: restore
        // shares the live file where it exists and maps a copy of this one where it does not.
        let smallShared = e.shared && st.isRegular && st.size <= min(embedLimit, FileEmbedder.sharedLimit)
        let embed = code || deleted || path == exe || (!e.shared && st.size <= embedLimit) || smallShared
        if embed && e.shared && deleted {
            var bytes = [UInt8](repeating: 0, count: Int(st.size))
            let got = try withContext("reading shared memory \(path)") { try bytes.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) } }
            pendingBytes.append((FileEmbedder.key(id), Array(bytes.prefix(got)), path))
        } else if embed {
            pending.append((FileEmbedder.key(id), fd, path, code))
            if code && !deleted { queueDebuggerScripts(for: path) }
        } else {
            notes.append("\(path) (\(st.size) bytes) is mapped\(e.shared ? " shared" : "") but not stored: restore needs it at the same path\(e.shared ? "" : ", unchanged")")
        }
        known[key] = id
        byPath[path] = key
        return id
    }

    static func key(_ f: FileIdentity) -> String { "\(f.device):\(f.inode)" }

    /// The largest file mapped shared that an image stores (as a fallback for a restore where
    /// the file is gone).
    static let sharedLimit: UInt64 = 1 << 20

    /// Where gdb looks for the scripts a program or library comes with.
    static let autoLoadDirectory = "/usr/share/gdb/auto-load"

    /// gdb's auto-load scripts for a code file (its pretty printers and commands, such as
    /// python's py-bt): the auto-load directory + the file's path + "-gdb.py", for its path,
    /// its real path, and the same with or without a leading /usr (merged-/usr systems file
    /// them under either). Stored as files of the image, so `wb restore --debug` elsewhere
    /// has the scripts of the programs the image holds.
    private mutating func queueDebuggerScripts(for path: String) {
        var names = [path]
        if let real = realpath(path, nil) { names.append(String(cString: real)); free(real) }
        for n in names { names.append(n.hasPrefix("/usr/") ? String(n.dropFirst(4)) : "/usr" + n) }
        for n in names {
            let script = FileEmbedder.autoLoadDirectory + n + "-gdb.py"
            guard !scripts.contains(script), let st = try? Paths.stat(script), st.isRegular, st.size <= 1 << 20,
                  let bytes = try? Paths.readBytes(script) else { continue }
            scripts.insert(script)
            pendingBytes.append(("script:" + script, bytes, script))
        }
    }

    func identity(ofPath path: String) -> FileIdentity? { byPath[path].flatMap { known[$0] } }

    /// Embeds the queued files; returns their content hashes by (device, inode).
    mutating func embedAll() throws -> [String: ContentHash] {
        var out: [String: ContentHash] = [:]
        for p in pending {
            let entry = try withContext("storing \(p.path)") { try writer.embed(file: p.fd, path: p.path, code: p.code) }
            out[p.key] = entry.hash
        }
        for p in pendingBytes {
            out[p.key] = try withContext("storing \(p.path)") { try writer.embed(bytes: p.bytes, path: p.path) }.hash
        }
        pendingBytes.removeAll()
        for k in known.keys { if let h = known[k].flatMap({ out[FileEmbedder.key($0)] }) { known[k]?.content = h } }
        pending.removeAll()
        return out
    }
}

extension Checkpointer {
    /// Stores the deleted files' contents `captureFiles` read.
    func embedDeletedFiles(_ contents: [Int32: [UInt8]], into p: inout ProcessState, writer: ImageWriter) throws {
        for i in p.fds.indices {
            guard let bytes = contents[p.fds[i].fd] else { continue }
            let entry = try withContext("storing deleted file \(p.fds[i].path)") { try writer.embed(bytes: bytes, path: p.fds[i].path) }
            p.fds[i].content = entry.hash
        }
    }

    /// Embeds the mapped files and records their content hashes in the mappings.
    func embedMappedFiles(_ files: inout FileEmbedder, into p: inout ProcessState) throws {
        let hashes = try files.embedAll()
        for i in p.mappings.indices {
            if let f = p.mappings[i].file, let h = hashes[FileEmbedder.key(f)] { p.mappings[i].file?.content = h }
        }
        if let exe = p.exeFile, let h = hashes[FileEmbedder.key(exe)] { p.exeFile?.content = h }
    }

    /// Every fd: what it is, its flags and offset; deleted files' contents (read now, into
    /// `deletedContents` by fd, and stored with `embedDeletedFiles` once the page data is
    /// complete); pipe buffers.
    /// A watch whose fd number no longer holds the watched file (closed, or reused) gets the
    /// number of another fd that holds it, if one does.
    func twinned(_ w: EpollWatch, inode: UInt64?, epoll: Int32, among fds: [Int32], links: [Int32: String]) -> EpollWatch {
        // A socket has one open file description, so its inode names it: the fd still holds
        // the watched socket. Otherwise the kernel tells whether an fd is the very open file
        // description watched (both ends of a pipe have one inode; so have all eventfds),
        // a walk of the epoll's watches each time.
        if let inode, links[w.fd] == "socket:[\(inode)]" { return w }
        func holds(_ fd: Int32) -> Bool { SharedFiles.isEpollTarget(pid, fd: fd, epoll: epoll, watch: w.fd) }
        if fds.contains(w.fd) && holds(w.fd) { return w }
        var out = w
        out.twin = fds.first { $0 != w.fd && holds($0) }
        return out
    }

    /// An inotify instance's watches, each with the path of its file (found by the handle
    /// fdinfo shows); a watch whose file cannot be named (deleted, on a filesystem wb sees
    /// no mount of) is refused by name. Events waiting to be read are not kept: noted.
    func inotifyWatches(_ f: FDPlan, _ fdinfo: String) throws -> [InotifyWatch] {
        let mounts = Inotify.mounts()
        var out: [InotifyWatch] = []
        for m in Inotify.marks(fdinfo) {
            guard let path = Inotify.path(of: m, mounts: mounts) else {
                throw WBError.refused("pid \(pid) cannot be checkpointed: fd \(f.fd) is an inotify instance whose watch \(m.wd) is of a file wb cannot find by path (deleted, or on a filesystem mounted nowhere wb sees). Nothing was changed")
            }
            out.append(InotifyWatch(wd: m.wd, mask: m.mask, path: path))
        }
        if let copy = try? SharedFiles.take(f.fd, of: pid), copy.queuedBytes > 0 {
            notes.append("fd \(f.fd) (inotify): \(copy.queuedBytes) bytes of events waiting to be read are not kept; the restored process will not see them")
        }
        return out
    }

    func captureFiles(_ tracee: Tracee, into p: inout ProcessState, plan: Preflight, deletedContents: inout [Int32: [UInt8]]) throws {
        var pipes: [UInt64: PipeState] = [:]
        var ends: [UInt64: (read: Bool, write: Bool)] = [:]
        // Sockets are read as they are now, with the process stopped: their TCP connections
        // held still first.
        var table = SocketTable()
        var embryos: [UInt64: UInt64] = [:]
        let allFDs = plan.fds.map(\.fd)
        let links = Dictionary(plan.fds.map { ($0.fd, $0.link) }, uniquingKeysWith: { a, _ in a })
        let socketFDs = plan.fds.filter { ($0.kind == .socket || $0.kind == .unixSocket) && placeholders[$0.fd] == nil }
        if !socketFDs.isEmpty {
            table = try plan.socketTable ?? withContext("listing sockets (sock_diag)") { try SocketTable.read(inet: false) }
            embryos = SocketProbe.embryos(of: tree?.sockets ?? Set(socketFDs.compactMap { Checkpointer.socketInode($0.link) }), table: table)
            stamp("files: sockets listed")
            try holdConnections(plan)
            stamp("files: connections held")
        }
        // What only the kernel's files tell (fdinfo: flags, offset, locks) and each socket's
        // state are read for all fds at once, on every core (the process waits meanwhile).
        let pid = self.pid
        // A socket's fdinfo holds nothing but its flags: they come from wb's copy of it (one
        // open file description) and close-on-exec from F_GETFD run in the process, all of
        // them in one batch, instead of a /proc file each (a server's thousand connections).
        // A socket someone holds a lock on (flock) is read as any other fd.
        var quick: [Int32: ProcFS.FDInfo] = [:]
        let sockets = socketFDs.filter { socketCopies[$0.fd] != nil && !lockedFiles.contains(Checkpointer.socketInode($0.link) ?? 0) }
        if sockets.count >= 32 {
            let closeOnExec = try fdFlags(tracee, sockets.map(\.fd))
            for f in sockets {
                guard let flags = socketCopies[f.fd]?.copy.statusFlags, let fdFlags = closeOnExec[f.fd], fdFlags >= 0 else { continue }
                quick[f.fd] = ProcFS.FDInfo(position: 0, flags: flags | (fdFlags & Int64(FD_CLOEXEC) != 0 ? O_CLOEXEC : 0), mountID: 0, extra: [:])
            }
        }
        let slow = plan.fds.filter { quick[$0.fd] == nil }.map(\.fd)
        let read = try Parallel.map(slow.count) { i -> (String, ProcFS.FDInfo) in
            ProcFS.fdInfo(pid, slow[i]) ?? ("", ProcFS.parseFDInfo(""))
        }
        var byFD = Dictionary(zip(slow, read), uniquingKeysWith: { a, _ in a })
        for (fd, info) in quick { byFD[fd] = ("", info) }
        let infos = plan.fds.map { byFD[$0.fd] ?? ("", ProcFS.FDInfo(position: 0, flags: 0, mountID: 0, extra: [:])) }
        stamp("files: fdinfo read")
        let nets = try captureSockets(plan, table: table, embryos: embryos)
        stamp("files: sockets read")
        for (index, f) in plan.fds.enumerated() {
            let (infoText, info) = infos[index]
            let cloexec = info.flags & O_CLOEXEC != 0
            var s = FDState(fd: f.fd, kind: f.kind ?? .placeholder, flags: info.flags & ~O_CLOEXEC,
                            closeOnExec: cloexec, path: options.renamedFiles[f.link] ?? f.link, offset: info.position)
            var locks: [FileLock] = []
            let lockLines = infoText.utf8.firstRange(of: "lock:".utf8) != nil ? infoText.split(separator: "\n").filter { $0.hasPrefix("lock:") } : []
            for line in lockLines {
                let (lock, other) = FileLock.parse(String(line))
                if let lock { locks.append(lock) } else {
                    let note = "fd \(f.fd) (\(f.link)) holds \(other), which wb does not restore"
                    if !notes.contains(note) { notes.append(note) }
                }
            }
            if !locks.isEmpty { s.locks = locks }
            if let why = placeholders[f.fd] {
                s.kind = .placeholder
                s.note = why
                // A socket's placeholder is a socket of its type (see FDBuilder).
                if Checkpointer.socketInode(f.link) != nil, let copy = try? SharedFiles.take(f.fd, of: pid) {
                    let id = SocketProbe.identity(copy.rawValue)
                    s.net = NetSocketState(family: id.family, type: id.type, proto: id.proto, state: .unbound)
                }
                p.fds.append(s)
                continue
            }
            let procPath = "/proc/\(pid)/fd/\(f.fd)"
            switch s.kind {
            case .deletedFile:
                let (path, _) = f.link.deletedStripped
                s.path = path
                let fd = try FileDescriptor.open(procPath, O_RDONLY, what: "reading deleted file \(path) (fd \(f.fd))")
                let st = try fd.stat()
                s.mode = st.mode & 0o7777
                s.object = "\(st.device):\(st.inode)"
                s.owner = [st.uid, st.gid]
                s.mtime = [st.mtimeSeconds, st.mtimeNanoseconds]
                s.seals = path.hasPrefix("/memfd:") ? fd.seals : nil
                let extents = fd.dataExtents(size: st.size)
                if extents != [[0, st.size]] && st.size > 0 { s.extents = extents }
                // From byte 0 whatever the position of this open: /proc/PID/fd of a memfd
                // or a tmpfs file may share the process's.
                deletedContents[f.fd] = try withContext("reading deleted file \(path)") {
                    var bytes = [UInt8](repeating: 0, count: Int(st.size))
                    let got = try bytes.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) }
                    return Array(bytes[0..<got])
                }
            case .pipe, .fifo:
                let id: UInt64
                if s.kind == .pipe {
                    id = UInt64(f.link.dropFirst("pipe:[".count).dropLast()) ?? 0
                } else {
                    id = try Paths.stat(procPath).inode
                    let (path, deleted) = f.link.deletedStripped
                    if deleted {
                        s.path = path
                        s.deleted = true
                        s.mode = try Paths.stat(procPath).mode & 0o7777
                    }
                }
                s.pipe = id
                var e = ends[id] ?? (false, false)
                if s.accessMode == O_RDONLY || s.accessMode == O_RDWR { e.read = true }
                if s.accessMode == O_WRONLY || s.accessMode == O_RDWR { e.write = true }
                ends[id] = e
                if pipes[id] == nil {
                    let (bytes, capacity) = try withContext("reading the buffer of fd \(f.fd) (\(f.link))") { try Pipes.peek(procPath) }
                    pipes[id] = PipeState(id: id, buffered: Data(bytes), capacity: capacity, external: false)
                }
            case .eventfd:
                s.eventfd = EventFDState(count: UInt64(info.extra["eventfd-count"] ?? "0", radix: 16) ?? 0,
                                         semaphore: info.extra["eventfd-semaphore"] == "1")
            case .timerfd:
                var t = TimerFDState(clock: Int32(info.extra["clockid"] ?? "1") ?? 1,
                                     ticks: UInt64(info.extra["ticks"] ?? "0") ?? 0,
                                     valueNanoseconds: ProcFS.parseTimespecPair(info.extra["it_value"]),
                                     intervalNanoseconds: ProcFS.parseTimespecPair(info.extra["it_interval"]))
                if let flags = info.extra["settime flags"].flatMap({ Int32($0, radix: 8) }), flags != 0 {
                    t.settimeFlags = flags
                    // An absolute wall-clock timer fires at a moment of the wall clock: that
                    // moment, here and wherever it is restored (the time left is read again next
                    // to the clock, for the moment to be exact).
                    if flags & 1 != 0, t.clock == CLOCK_REALTIME || t.clock == 8 /* CLOCK_REALTIME_ALARM */, t.valueNanoseconds > 0 {
                        let left = ProcFS.fdInfo(pid, f.fd).map { ProcFS.parseTimespecPair($0.1.extra["it_value"]) } ?? t.valueNanoseconds
                        var now = timespec()
                        clock_gettime(CLOCK_REALTIME, &now)
                        if left > 0 { t.absoluteNanoseconds = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec) + left }
                    }
                }
                s.timerfd = t
            case .signalfd:
                s.signalfdMask = UInt64(info.extra["sigmask"] ?? "0", radix: 16) ?? 0
            case .epoll:
                s.epoll = ProcFS.parseEpollWatchesWithInodes(infoText).map {
                    twinned($0.watch, inode: $0.inode, epoll: f.fd, among: allFDs, links: links)
                }
            case .unixSocket:
                let inode = Checkpointer.socketInode(f.link) ?? 0
                let info = f.socket
                let copy = try socketCopy(f.fd)
                var state = SocketState(type: info?.type ?? 1, inode: inode, peer: info?.peer ?? 0, queued: Data())
                socketDefaults.prepare(for: copy.rawValue)
                var net = try withContext("reading fd \(f.fd) (\(f.link))") {
                    try SocketProbe.capture(copy.rawValue, inode: inode, table: table, peerInside: true, defaults: socketDefaults)
                }
                if state.type == Int32(SOCK_STREAM.rawValue) {
                    state.queued = Data(try withContext("reading the bytes queued on fd \(f.fd) (\(f.link))") { try UnixSocketInfo.peek(copy) })
                } else if let messages = net.datagrams {
                    state.messages = messages.map(\.bytes)
                }
                net.datagrams = nil
                net.queued = nil
                s.socket = state
                s.net = net
            case .socket:
                s.net = nets[f.fd]
            case .pidfd:
                s.pidfdTarget = Int32(info.extra["Pid"] ?? "")
            case .inotify:
                s.inotify = try inotifyWatches(f, infoText)
            case .file:
                let (path, deleted) = f.link.deletedStripped
                if deleted, let st = try? Paths.stat(procPath), st.isDirectory {
                    let removed = Checkpointer.deletedDirectory(st)
                    s.path = path
                    s.deleted = true
                    s.mode = removed.mode
                    s.owner = removed.owner
                    s.object = removed.object
                } else {
                    s.filesystem = Filesystems.magic(procPath)
                }
            case .fanotify:
                s.fanotify = try fanotifyGroup(f, infoText)
            case .mqueue:
                let queue = try messageQueue(f, procPath)
                s.mqueue = queue
                s.path = "/" + queue.name
                if queue.deleted == true { s.deleted = true }
            case .ptyMaster:
                let copy = try SharedFiles.take(f.fd, of: pid)
                let pair = try PseudoTerminals.read(master: copy.rawValue)
                s.pty = PtyState(index: pair.index, locked: pair.locked, packet: pair.packet, termios: Data(pair.termios), winsize: pair.winsize)
                if pair.readable > 0 {
                    notes.append("fd \(f.fd), the master of /dev/pts/\(pair.index), had \(pair.readable) bytes from the terminal side not read yet; they are not restored")
                }
            case .ptySlave:
                s.ptyIndex = PseudoTerminals.index(of: f.link)
                if let copy = try? SharedFiles.take(f.fd, of: pid), case let n = PseudoTerminals.readable(copy.rawValue), n > 0 {
                    let note = "/dev/pts/\(s.ptyIndex ?? -1) had \(n) bytes typed on its master not read yet; they are not restored"
                    if !notes.contains(note) { notes.append(note) }
                }
            case .device, .tty, .placeholder:
                break
            }
            p.fds.append(s)
        }
        let owners = try signalOwners(tracee, p.fds.filter { $0.kind != .placeholder }.map(\.fd))
        for i in p.fds.indices { p.fds[i].signalOwner = owners[p.fds[i].fd] }
        for (id, e) in ends { pipes[id]?.external = !(e.read && e.write) }
        p.pipes = pipes.values.sorted { $0.id < $1.id }
        for pipe in p.pipes where pipe.external && tree == nil {
            let holders = p.fds.filter { $0.pipe == pipe.id }.map { "fd \($0.fd)" }.joined(separator: ", ")
            notes.append("pipe \(pipe.id) (\(holders)) has its other end outside the process")
        }
    }

    /// A POSIX message queue: its name, attributes, owner and messages. The messages are
    /// taken and sent back in the same order (a queue cannot be read without taking) while
    /// the process is stopped; a notification registered on it was refused in the preflight.
    func messageQueue(_ f: FDPlan, _ procPath: String) throws -> MessageQueueState {
        let (path, deleted) = f.link.deletedStripped
        let name = String(path.split(separator: "/").last ?? "")
        let what = "the POSIX message queue \(path) (fd \(f.fd))"
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(procPath, O_RDWR | O_NONBLOCK, what: "opening \(what)")
        } catch let WBError.system(_, code, _) where code == EACCES {
            throw WBError.refused("pid \(pid) cannot be checkpointed: fd \(f.fd) is \(what.dropFirst(4)), which wb may not both read and write (its mode lets this user only one of them; run wb as root). Nothing was changed")
        }
        let st = try fd.stat()
        let attributes = try MessageQueues.attributes(fd)
        let messages = try MessageQueues.copyMessages(fd, messageSize: attributes.messageSize, what: what)
        return MessageQueueState(name: name, object: "\(st.device):\(st.inode)", maxMessages: attributes.maxMessages,
                                 messageSize: attributes.messageSize, mode: st.mode & 0o7777, owner: [st.uid, st.gid],
                                 messages: messages.map { MessageQueueMessage(priority: $0.priority, bytes: Data($0.bytes)) },
                                 deleted: deleted ? true : nil)
    }

    /// A fanotify group's settings and marks, each mark with a path restore can mark again
    /// (an inode's found by its handle, a mount's by its mount point, a filesystem's by one
    /// of its mounts); a mark that cannot be named is refused by name. Events waiting to be
    /// read are not kept: noted.
    func fanotifyGroup(_ f: FDPlan, _ fdinfo: String) throws -> FanotifyState {
        guard let settings = Fanotify.settings(fdinfo) else {
            throw WBError.refused("pid \(pid) cannot be checkpointed: fd \(f.fd) is a fanotify group whose settings its fdinfo does not show. Nothing was changed")
        }
        let mounts = Inotify.mounts()
        var marks: [FanotifyMark] = []
        for m in Fanotify.marks(fdinfo) {
            let mark: FanotifyMark?
            switch m.target {
            case let .inode(handle):
                mark = Inotify.path(of: handle, mounts: mounts).map { FanotifyMark(kind: .inode, path: $0, flags: m.flags, mask: m.mask, ignoredMask: m.ignoredMask) }
            case let .mount(id):
                mark = Fanotify.mountPoint(id, of: pid).map { FanotifyMark(kind: .mount, path: $0, flags: m.flags, mask: m.mask, ignoredMask: m.ignoredMask) }
            case let .filesystem(device):
                mark = mounts[device].map { FanotifyMark(kind: .filesystem, path: $0, flags: m.flags, mask: m.mask, ignoredMask: m.ignoredMask) }
            }
            guard let mark else {
                throw WBError.refused("pid \(pid) cannot be checkpointed: fd \(f.fd) is a fanotify group with a mark wb cannot find by path (a file deleted, or on a filesystem mounted nowhere wb sees). Nothing was changed")
            }
            marks.append(mark)
        }
        if let copy = try? SharedFiles.take(f.fd, of: pid), copy.queuedBytes > 0 {
            notes.append("fd \(f.fd) (fanotify): \(copy.queuedBytes) bytes of events waiting to be read are not kept; the restored process will not see them")
        }
        return FanotifyState(flags: settings.flags, eventFlags: settings.eventFlags, marks: marks)
    }

    /// F_GETFD of each of `fds`, run in the stopped process in one batch (by fd; a negative
    /// value is the call's error).
    func fdFlags(_ tracee: Tracee, _ fds: [Int32]) throws -> [Int32: Int64] {
        guard !fds.isEmpty else { return [:] }
        let (results, _) = try tracee.batch(in: pid, count: fds.count, outputBytes: 0) { _ in fds.map { (.fcntl, [UInt64($0), UInt64(F_GETFD)]) } }
        return Dictionary(zip(fds, results), uniquingKeysWith: { a, _ in a })
    }

    /// Who gets a signal for I/O on each of `fds` (F_GETOWN_EX) and which (F_GETSIG), run in
    /// the stopped process in one batch; only fds with an owner or a signal of their own.
    func signalOwners(_ tracee: Tracee, _ fds: [Int32]) throws -> [Int32: SignalOwner] {
        guard !fds.isEmpty else { return [:] }
        let (results, words) = try tracee.batch(in: pid, count: 2 * fds.count, outputBytes: fds.count * 8) { owners in
            fds.enumerated().flatMap { i, fd -> [(SyscallNumber, [UInt64])] in
                [(.fcntl, [UInt64(fd), 16 /* F_GETOWN_EX */, owners + UInt64(i) * 8]), (.fcntl, [UInt64(fd), 11 /* F_GETSIG */])]
            }
        }
        var out: [Int32: SignalOwner] = [:]
        for (i, fd) in fds.enumerated() where results[2 * i] == 0 {
            let type = words.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: i * 8, as: Int32.self) }
            let owner = words.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: i * 8 + 4, as: Int32.self) }
            let signal = Int32(truncatingIfNeeded: max(results[2 * i + 1], 0))
            if owner != 0 || signal != 0 { out[fd] = SignalOwner(type: type, pid: owner, signal: signal) }
        }
        return out
    }

    /// The inodes /proc/locks names: files (and sockets) someone holds a lock on.
    static func lockedInodes() -> Set<UInt64> {
        var out = Set<UInt64>()
        for line in ((try? Paths.readText("/proc/locks")) ?? "").split(separator: "\n") {
            // "1: FLOCK  ADVISORY  WRITE 1234 00:08:5678 0 EOF"
            for field in line.split(separator: " ") where field.filter({ $0 == ":" }).count == 2 {
                if let inode = field.split(separator: ":").last.flatMap({ UInt64($0) }) { out.insert(inode) }
            }
        }
        return out
    }

    /// What restore needs to make a removed directory again.
    static func deletedDirectory(_ st: FileDescriptor.Status) -> DeletedDirectory {
        DeletedDirectory(mode: st.mode & 0o7777, owner: [st.uid, st.gid], object: "\(st.device):\(st.inode)")
    }
}
