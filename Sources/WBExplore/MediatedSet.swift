import CWBNative
import Foundation
import Glibc
import WBCore
import WBNet
import WBRestore
import WBSet
import WBSymbols
import WBSystem
import WBTrace

/// A set image restored on this box with every channel between its members in wb's hands:
/// a write a member makes on such a connection does not reach the network but becomes a
/// pending message, and reaches the peer when `deliver` sends it on the writer's own socket.
///
/// Writes are caught by a seccomp filter on the channel sockets' fds (write, writev, sendto,
/// sendmsg); the call returns as if it had sent everything, so the writer runs on. A
/// delivery writes the bytes through wb's copy of the writer's socket (pidfd_getfd), so the
/// peer reads them from the connection it had, in order, as the kernel delivers them. Between
/// deliveries `settle` runs the members until each waits (blocked reading, polling, in
/// accept, on a futex, ...) with nothing of its own under way: one local step per delivery.
public final class MediatedSet {
    /// A restored member and the processes it holds.
    public final class Member {
        public let index: Int
        public let name: String
        public let restored: SetRestorer.Restored
        /// The connections its crash left closing, to be cleared away for a restart: in
        /// its host's network namespace, this end's and the peer's addresses.
        var closing: [(namespace: NetNamespace, local: SocketAddress, peer: SocketAddress, family: Int32)] = []
        /// The member's processes (its top process first), as wb traces them.
        public let processes: [Tracee]
        /// How the member ended (its top process), once it has.
        public internal(set) var ended: Int32?
        /// Ended by a crash fault wb injected: not a violation.
        public internal(set) var crashed = false
        /// Ended by exit or exit_group, which wb holds: the process stays, stopped at the
        /// call, so that it can be put back for the next run.
        public internal(set) var heldAtExit = false
        init(index: Int, restored: SetRestorer.Restored) {
            self.index = index
            name = restored.member.name
            self.restored = restored
            processes = [restored.process.tracee] + restored.process.descendants
        }
    }

    /// A write that wb holds, or the end of a direction (the writer closed its socket, or
    /// shut it down for writing): held behind the writes before it, as TCP keeps that order.
    public struct Message {
        public enum Kind { case data, close, shutdown, drop, crash, restart }
        public var id: MessageID
        public var kind = Kind.data
        public var from: Int
        public var to: Int
        public var bytes: [UInt8]
        /// The delivery (its index in `delivered`) during whose step the message was written;
        /// nil: before the first delivery.
        public var cause: Int?
    }

    /// A channel end wb mediates: writes on `fd` of process `pid` (as wb sees it).
    struct End {
        var channel: Int
        var forward: Bool
        var member: Int
        var peer: Int
        /// wb's copy of the socket: the connection stays open until a close the member
        /// made is delivered.
        var socket: FileDescriptor
    }

    public let set: SetRestorer
    public private(set) var members: [Member] = []
    var ends: [Int32: [Int32: End]] = [:]
    var senders: [Direction: End] = [:]
    /// Pending messages, per direction, oldest first.
    public internal(set) var pending: [Direction: [Message]] = [:]
    var nextSeq: [Direction: Int] = [:]
    /// The deliveries made, in order.
    public internal(set) var delivered: [Message] = []
    /// What went wrong, once something did; the run stops there.
    public internal(set) var violation: Violation?
    /// The thread of a crash, left in its signal-delivery stop.
    public internal(set) var crashStop: (member: Int, tid: Int32, signal: Int32)?
    /// wb's copy of every channel socket, by member: a connection stays open while its
    /// member lives, also once a close of it was delivered (the peer read the end of the
    /// stream), so that it can be put back for the next run.
    var sockets: [Int: [FileDescriptor]] = [:]
    /// wb's copy of each channel end, by the direction it writes (while its member lives).
    var writers: [Direction: FileDescriptor] = [:]
    /// Per direction, what its sender had acknowledged less what its peer had received,
    /// when nothing was unacknowledged (see `everythingSentArrived`).
    var countOffsets: [Direction: UInt64] = [:]
    /// Processes that made a mapping call since the run began (`mappingCalls`).
    var mappingsTouched = Set<Int32>()
    /// Threads wb keeps stopped: a member held at its exit.
    var heldThreads = Set<Int32>()
    /// The state every run starts from, once kept (`keepBase`), for `rewind`.
    var base: Base?
    /// Writes wb let through unmediated (file-descriptor passing, sendmmsg, an address given).
    public private(set) var unmediated: [String] = []
    /// How long a member may run after a delivery without waiting for anything.
    public var stepLimit: Double = 10
    var all: [Tracee] { members.flatMap { $0.processes } }
    private var backtracers: [Int: Backtracer] = [:]

    /// Calls that mean "waiting for something from outside": a member whose every thread is
    /// in one of them has finished its step.
    static let waiting: Set<Int> = [0, 7, 17, 19, 23, 34, 43, 45, 47, 61, 128, 130, 202, 232, 247, 270, 271, 281, 288, 295, 299, 441, 449]
    /// write, writev, sendto, sendmsg, sendmmsg; close and shutdown.
    static let calls: [Int] = [1, 20, 44, 46, 307, 3, 48]
    /// exit and exit_group, held in each member's top process.
    static let exits: [Int] = [60, 231]
    /// Calls that change a process's mappings (mmap, mprotect, munmap, brk, mremap, shmat,
    /// shmdt, remap_file_pages, pkey_mprotect): seen, so that a digest of its memory reads
    /// its mappings again only after one.
    static let mappingCalls: [Int] = [9, 10, 11, 12, 25, 30, 67, 216, 329]

    /// Restores the set (its hosts, every member stopped), puts a filter on each channel end,
    /// and lets the members run until they settle. Throws, leaving nothing behind, when the
    /// set cannot be restored.
    public init(dir: String, options: RestoreOptions, tag: String = "", progress: @escaping (String) -> Void = { _ in }) throws {
        Signals.block([SIGCHLD])
        set = try SetRestorer(dir: dir, tag: tag)
        set.options = options
        set.progress = progress
        let restored = try set.restore()
        members = restored.enumerated().map { Member(index: $0.offset, restored: $0.element) }
        do {
            try mediate()
            try set.liftHold()
            for t in all { t.resumeAll() }
        } catch {
            end()
            throw error
        }
    }

    private func mediate() throws {
        var byOriginal: [String: (member: Int, tracee: Tracee)] = [:]
        for m in members {
            for t in m.processes {
                // The pid the process sees itself as: the one the manifest names.
                guard let original = ProcFS.innermostPid(t.pid) else { continue }
                byOriginal["\(m.restored.member.host)/\(original)"] = (m.index, t)
            }
        }
        var fdsOf: [Int32: [Int32]] = [:]
        for (i, c) in set.manifest.channels.enumerated() {
            guard let a = byOriginal["\(c.a.host)/\(c.a.pid)"], let b = byOriginal["\(c.b.host)/\(c.b.pid)"] else {
                throw WBError.failed("channel \(i) of the set (\(c.a.address) - \(c.b.address)) has an end in no restored process")
            }
            for (me, peer, fd, forward) in [(a, b, c.a.fd, true), (b, a, c.b.fd, false)] {
                let socket = try me.tracee.takeFD(fd)
                sockets[me.member, default: []].append(socket)
                let end = End(channel: i, forward: forward, member: me.member, peer: peer.member, socket: socket)
                ends[me.tracee.pid, default: [:]][fd] = end
                senders[Direction(channel: i, forward: forward)] = end
                writers[Direction(channel: i, forward: forward)] = socket
                fdsOf[me.tracee.pid, default: []].append(fd)
            }
        }
        let tops = Set(members.map { $0.processes[0].pid })
        for t in all {
            try t.addOptions(Tracee.traceSeccompOption | Tracee.exitKillOption)
            let fds = fdsOf[t.pid]
            t.syscallGadget = try t.findSyscallGadget(in: try ProcFS.maps(t.pid, withFlags: false))
            try t.withSyscalls(in: t.pid) { s in
                let scratch = try s.mapScratch(bytes: 4096)
                defer { _ = try? s.raw(.munmap, scratch, 4096) }
                if let fds { try SeccompFilter(traced: MediatedSet.calls.map { ($0, 0) }, onlyFDs: fds).install(t, s, scratch: scratch) }
                let traced = MediatedSet.mappingCalls.map { ($0, UInt16(2)) } + (tops.contains(t.pid) ? MediatedSet.exits.map { ($0, UInt16(1)) } : [])
                try SeccompFilter(traced: traced).install(t, s, scratch: scratch)
            }
        }
    }

    // MARK: Running

    /// The messages that can be delivered next: the oldest pending one of each direction
    /// whose receiver has not ended.
    public var enabled: [Message] {
        pending.values.compactMap { $0.first }.filter { members[$0.to].ended == nil }
            .sorted { ($0.id.channel, $0.id.forward ? 0 : 1) < ($1.id.channel, $1.id.forward ? 0 : 1) }
    }

    public var inFlight: Int { pending.values.reduce(0) { $0 + $1.count } }

    /// Runs the members until every one that is alive waits, or something goes wrong.
    public func settle() throws {
        let started = Clock.monotonic
        var lastEvent = Clock.monotonic
        var quietChecks = 0
        while violation == nil {
            if members.allSatisfy({ $0.ended != nil }) { return }
            if let (t, tid, stop) = try Tracee.waitAny(among: all.filter { !$0.tids.isEmpty }, timeout: 0.0002) {
                try handle(t, tid, stop)
                lastEvent = Clock.monotonic
                quietChecks = 0
                continue
            }
            if Clock.monotonic - lastEvent >= 0.0002 && everythingSentArrived() && everyoneWaits() {
                quietChecks += 1
                if quietChecks >= 2 { return }
                continue
            }
            quietChecks = 0
            if Clock.monotonic - started > stepLimit {
                let busy = members.filter { $0.ended == nil && !waits($0) }.map(\.name)
                if busy.isEmpty {
                    // Every member waits, and bytes sent on a channel have not arrived.
                    let channels = set.manifest.channels
                    let stuck = unarrived().map { d -> String in
                        let c = channels[d.channel]
                        return d.forward ? "\(c.a.address) -> \(c.b.address)" : "\(c.b.address) -> \(c.a.address)"
                    }
                    violation = Violation(kind: .liveness, member: nil,
                                          what: "bytes sent on \(stuck.isEmpty ? "a channel" : stuck.joined(separator: ", ")) not received \(Int(stepLimit)) s after the last delivery, every member waiting")
                } else {
                    violation = Violation(kind: .liveness, member: busy.first,
                                          what: "\(busy.joined(separator: ", ")) still running \(Int(stepLimit)) s after the last delivery without waiting for a message")
                }
            }
        }
    }

    /// Whether every byte sent on a channel has reached the other end's socket: the last
    /// delivery, and data the snapshot held in flight, which the rebuilt connections send
    /// again. A direction with nothing unacknowledged has arrived; then what the sender
    /// has had acknowledged and what its peer has received are compared, and later what it
    /// queued is all there once its peer has received that much more (no wait for a
    /// delayed acknowledgement). The first time, the comparison waits for the
    /// acknowledgement: a restored sender may resend what its peer had already received.
    func everythingSentArrived() -> Bool { unarrived(first: true).isEmpty }

    /// The directions whose bytes have not all arrived (with `first`, the first found only).
    private func unarrived(first: Bool = false) -> [Direction] {
        var out: [Direction] = []
        for (d, writer) in writers where !dropped.contains(d.channel) {
            guard let reader = writers[Direction(channel: d.channel, forward: !d.forward)],
                  let w = SocketProbe.tcpCounts(writer.rawValue), let r = SocketProbe.tcpCounts(reader.rawValue) else { continue }
            if w.queued == 0 {
                countOffsets[d] = w.acked &- r.received
                continue
            }
            guard let offset = countOffsets[d], w.acked &+ w.queued &- offset <= r.received else {
                out.append(d)
                if first { return out }
                continue
            }
        }
        return out
    }

    private func everyoneWaits() -> Bool {
        members.allSatisfy { $0.ended != nil || waits($0) }
    }

    private func waits(_ m: Member) -> Bool {
        for t in m.processes where !t.tids.isEmpty {
            for tid in t.tids {
                guard let text = try? Paths.readText("/proc/\(t.pid)/task/\(tid)/syscall"),
                      let nr = text.split(separator: " ").first.flatMap({ Int($0) }) else {
                    // A thread that just ended: not a reason to wait.
                    if !Paths.exists("/proc/\(t.pid)/task/\(tid)") { continue }
                    return false
                }
                if !MediatedSet.waiting.contains(nr) { return false }
                // Asleep in it: a thread something woke (a message arrived, a futex was
                // released) is runnable until it has run.
                guard let stat = try? Paths.readText("/proc/\(t.pid)/task/\(tid)/stat"),
                      let close = stat.lastIndex(of: ")"), stat.index(close, offsetBy: 2) < stat.endIndex,
                      stat[stat.index(close, offsetBy: 2)] == "S" else { return false }
            }
        }
        return true
    }

    private func member(of t: Tracee) -> Member? { members.first { $0.processes.contains { $0 === t } } }

    private func handle(_ t: Tracee, _ tid: Int32, _ stop: Tracee.Stop) throws {
        guard let m = member(of: t) else { return }
        if m.heldAtExit && t === m.processes[0] || m.crashed {
            // A thread of a process held at its exit, or of a crashed member: it stays
            // where it stopped.
            switch stop {
            case .event, .interrupted, .signal: heldThreads.insert(tid)
            case .exited, .killed: break
            }
            return
        }
        switch stop {
        case let .event(ev) where ev == Tracee.seccompEvent:
            try capture(t, tid, m)
        case .event:
            try t.resume(tid, .continue)
        case let .interrupted(sig):
            try t.goOn(tid, afterStopWith: sig)
        case let .signal(sig):
            if [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS].contains(sig) && !catches(t.pid, sig) {
                // Left in its signal-delivery stop: a debugger finds it at the fault.
                violation = Violation(kind: .crash, member: m.name, what: "\(m.name) took \(SignalNames.name(sig))",
                                      detail: backtrace(m, t, tid))
                crashStop = (m.index, tid, sig)
                return
            }
            try t.resume(tid, .continue, signal: sig)
        case let .exited(code):
            if tid == t.pid && t === m.processes[0] {
                gone(m)
                m.ended = code
                if code != 0 && !m.crashed { violation = Violation(kind: .exit, member: m.name, what: "\(m.name) exited with status \(code)") }
            }
        case let .killed(sig):
            if tid == t.pid && t === m.processes[0] {
                gone(m)
                m.ended = 128 + sig
                if !m.crashed { violation = Violation(kind: .exit, member: m.name, what: "\(m.name) was killed by \(SignalNames.name(sig))") }
            }
        }
    }

    /// A member's process is gone: its connections close as the kernel closes them (a reset
    /// where data was left unread), wb holding no copy of them any more, and the kept state
    /// cannot be gone back to in place.
    private func gone(_ m: Member) {
        base = nil
        for s in sockets.removeValue(forKey: m.index) ?? [] {
            for (d, w) in writers where w === s { writers[d] = nil }
            s.close()
        }
    }

    /// Whether process `pid` has a handler for `sig` (SigCgt).
    private func catches(_ pid: Int32, _ sig: Int32) -> Bool {
        ProcFS.signalDisposition(pid, tid: pid, signal: sig)?.caught ?? false
    }

    private func backtrace(_ m: Member, _ t: Tracee, _ tid: Int32) -> String {
        guard t === m.processes[0], let regs = try? t.registers(tid) else { return "" }
        if backtracers[m.index] == nil {
            let memory = t.memory
            backtracers[m.index] = try? Backtracer(mappings: m.restored.image.process.mappings, files: m.restored.files,
                                                   debugDirectories: [], read: { try? memory.readWord($0) })
        }
        guard let b = backtracers[m.index] else { return "" }
        b.attach(pid: t.pid, threads: [(tid, regs)])
        return b.backtrace(tid, maxFrames: 32).enumerated().map { "#\($0.offset) \($0.element.description)" }.joined(separator: "\n")
    }

    /// A write on a channel end: its bytes become a pending message, and the call returns
    /// their count without sending anything.
    private func capture(_ t: Tracee, _ tid: Int32, _ m: Member) throws {
        var regs = try t.registers(tid)
        let nr = Int(truncatingIfNeeded: regs.origRax)
        if MediatedSet.exits.contains(nr) { return try holdExit(m, t, tid, regs) }
        if MediatedSet.mappingCalls.contains(nr) {
            mappingsTouched.insert(t.pid)
            return try t.resume(tid, .continue)
        }
        let fd = Int32(truncatingIfNeeded: regs.rdi)
        // A connection a fault dropped: the call fails as the kernel has it fail.
        guard let end = ends[t.pid]?[fd], !dropped.contains(end.channel) else { return try t.resume(tid, .continue) }
        func hold(_ kind: Message.Kind, _ bytes: [UInt8]) { enqueue(end, kind, bytes) }
        if nr == 3 {
            // The member's fd goes now (its number may be used again); the connection ends
            // when the close is delivered, after the writes before it.
            ends[t.pid]?[fd] = nil
            hold(.close, [])
            return try t.resume(tid, .continue)
        }
        if nr == 48 {
            guard regs.rsi == UInt64(SHUT_WR) || regs.rsi == UInt64(SHUT_RDWR) else { return try t.resume(tid, .continue) }
            hold(.shutdown, [])
            regs.origRax = UInt64.max
            regs.rax = 0
            try t.setRegisters(tid, regs)
            return try t.resume(tid, .continue)
        }
        var pieces: [(UInt64, UInt64)] = []
        switch nr {
        case 1:
            pieces = [(regs.rsi, regs.rdx)]
        case 44 where regs.r8 == 0:
            pieces = [(regs.rsi, regs.rdx)]
        case 20:
            pieces = try vector(t, at: regs.rsi, count: regs.rdx)
        case 46:
            let header = try t.read(regs.rsi, count: 56)
            let word = { (o: Int) in header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o, as: UInt64.self) } }
            if word(40) == 0 && word(0) == 0 { pieces = try vector(t, at: word(16), count: word(24)) }
        default:
            break
        }
        let total = pieces.reduce(0) { $0 + $1.1 }
        if pieces.isEmpty || total > 64 << 20 {
            let why = nr == 307 ? "sendmmsg" : nr == 46 ? "sendmsg with an address or control data" : nr == 44 ? "sendto with an address" : "a write of \(total) bytes"
            let note = "\(m.name) fd \(fd): \(why) passed unmediated"
            if !unmediated.contains(note) { unmediated.append(note) }
            return try t.resume(tid, .continue)
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(total))
        for (base, length) in pieces where length > 0 { bytes += try t.read(base, count: Int(length)) }
        if !bytes.isEmpty { hold(.data, bytes) }
        // Skipped, with the count as its result.
        regs.origRax = UInt64.max
        regs.rax = total
        try t.setRegisters(tid, regs)
        try t.resume(tid, .continue)
    }

    /// A message written on `end`, held.
    private func enqueue(_ end: End, _ kind: Message.Kind, _ bytes: [UInt8]) {
        let direction = Direction(channel: end.channel, forward: end.forward)
        let seq = nextSeq[direction, default: 0]
        nextSeq[direction] = seq + 1
        pending[direction, default: []].append(Message(id: MessageID(channel: end.channel, forward: end.forward, seq: seq), kind: kind,
                                                       from: end.member, to: end.peer, bytes: bytes,
                                                       cause: delivered.isEmpty ? nil : delivered.count - 1))
    }

    /// exit or exit_group in a member's top process: the member has ended, with the call's
    /// status, but the process stays, stopped at the call (its other threads stopped too),
    /// so that a rewind can put it back. What the kernel would do at the exit that others
    /// see happens instead: its channel ends close, behind the writes made before. A thread
    /// of several that exits alone goes on.
    private func holdExit(_ m: Member, _ t: Tracee, _ tid: Int32, _ regs: Registers) throws {
        if regs.origRax == 60 && t.tids.count > 1 { return try t.resume(tid, .continue) }
        heldThreads.insert(tid)
        for other in t.tids where other != tid && !heldThreads.contains(other) { try t.interrupt(other) }
        m.heldAtExit = true
        let code = Int32(truncatingIfNeeded: regs.rdi & 0xFF)
        m.ended = code
        if code != 0 && !m.crashed { violation = Violation(kind: .exit, member: m.name, what: "\(m.name) exited with status \(code)") }
        for (_, end) in (ends[t.pid] ?? [:]).sorted(by: { $0.key < $1.key }) where !dropped.contains(end.channel) { enqueue(end, .close, []) }
        ends[t.pid] = [:]
    }

    private func vector(_ t: Tracee, at address: UInt64, count: UInt64) throws -> [(UInt64, UInt64)] {
        guard count > 0, count <= 1024 else { return count == 0 ? [(0, 0)] : [] }
        let raw = try t.read(address, count: Int(count) * 16)
        return (0..<Int(count)).map { i in
            raw.withUnsafeBytes { ($0.loadUnaligned(fromByteOffset: i * 16, as: UInt64.self), $0.loadUnaligned(fromByteOffset: i * 16 + 8, as: UInt64.self)) }
        }
    }

    /// Sends the pending message `id` (the oldest of its direction) to its receiver.
    public func deliver(_ id: MessageID) throws {
        let direction = id.direction
        guard let message = pending[direction]?.first, message.id == id, let end = senders[direction] else {
            throw WBError.failed("message \(id) is not the next one on its channel")
        }
        pending[direction]!.removeFirst()
        if pending[direction]!.isEmpty { pending[direction] = nil }
        delivered.append(message)
        switch message.kind {
        case .close:
            // The end of the stream (FIN); wb keeps its copy of the socket while the member
            // lives (data sent to it after is taken and dropped, not answered with a reset).
            _ = shutdown(end.socket.rawValue, Int32(SHUT_WR))
            senders[direction] = nil
            return
        case .shutdown:
            _ = shutdown(end.socket.rawValue, Int32(SHUT_WR))
            return
        case .data, .drop, .crash, .restart:
            break
        }
        var offset = 0
        let deadline = Clock.monotonic + 10
        while offset < message.bytes.count {
            let n = message.bytes[offset...].withUnsafeBytes { send(end.socket.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if n > 0 { offset += n; continue }
            if n < 0 && errno != EAGAIN && errno != EINTR {
                // The receiver's end is gone (it closed, or ended): the message is lost, as on
                // a real network.
                break
            }
            if Clock.monotonic > deadline {
                violation = Violation(kind: .liveness, member: members[message.to].name,
                                      what: "\(members[message.to].name) has not read a message of \(message.bytes.count) bytes in 10 s")
                break
            }
            var p = pollfd(fd: end.socket.rawValue, events: Int16(POLLOUT), revents: 0)
            _ = poll(&p, 1, 10)
        }
    }

    // MARK: Faults

    /// Channels whose connection a fault dropped.
    public internal(set) var dropped = Set<Int>()

    /// The faults that can happen now: dropping each connection still up between two live
    /// members, crashing each live member.
    public var faults: [MessageID] {
        let drops = set.manifest.channels.indices.filter { i in
            guard !dropped.contains(i), let a = senders[Direction(channel: i, forward: true)],
                  let b = senders[Direction(channel: i, forward: false)] else { return false }
            return members[a.member].ended == nil && members[b.member].ended == nil
        }
        return drops.map(MessageID.drop) + members.filter { $0.ended == nil }.map { MessageID.crash($0.index) }
            + members.filter { $0.crashed }.map { MessageID.restart($0.index) }
    }

    /// Whether `id` can happen now: the oldest pending message of its direction to a live
    /// member, or a fault that can.
    public func canPerform(_ id: MessageID) -> Bool {
        id.isFault ? faults.contains(id) : enabled.contains { $0.id == id }
    }

    /// Delivers a message or injects a fault; the step it was, for the strategy.
    public func perform(_ id: MessageID) throws -> Step {
        if id.isFault {
            try inject(id)
            return Step(id: id, receiver: -1, cause: nil)
        }
        guard let message = pending[id.direction]?.first, message.id == id else {
            throw WBError.failed("message \(id) is not the next one on its channel")
        }
        try deliver(id)
        return Step(id: id, receiver: message.to, cause: message.cause)
    }

    /// Injects a fault. Dropping a connection discards what is in flight on it and shuts
    /// it down at both ends (each member reads its end, then gets an error on writing, as
    /// after a network failure). Crashing a member kills it (SIGKILL) with the messages it
    /// had not yet delivered, as a crash of its machine loses them; its connections close.
    public func inject(_ id: MessageID) throws {
        if let index = id.restartedMember {
            guard index < members.count, members[index].crashed else { throw WBError.failed("fault \(id): the member has not crashed") }
            try restart(index)
            delivered.append(Message(id: id, kind: .restart, from: index, to: index, bytes: [], cause: nil))
            return
        }
        if let index = id.crashedMember {
            guard index < members.count, members[index].ended == nil else { throw WBError.failed("fault \(id): the member is not running") }
            let m = members[index]
            m.crashed = true
            if let ns = try? NetNamespace.of(m.processes[0].pid) {
                for s in sockets[index] ?? [] {
                    guard let local = SocketName.local(s.rawValue), let peer = SocketName.peer(s.rawValue) else { continue }
                    m.closing.append((ns, local, peer, SocketProbe.identity(s.rawValue).family))
                }
            }
            for (d, _) in pending where senders[d]?.member == index || senders[Direction(channel: d.channel, forward: !d.forward)]?.member == index {
                pending[d] = nil
            }
            for (d, e) in senders where e.member == index { senders[d] = nil }
            // Stopped for good rather than killed, so that the next run can put it back;
            // its connections to the others close as the kernel closes a dead process's:
            // a FIN, or a reset where it left data unread.
            for t in m.processes where !t.tids.isEmpty {
                try t.stopAll(alreadyStopped: heldThreads.filter { t.tids.contains($0) })
                heldThreads.formUnion(t.tids)
                ends[t.pid] = [:]
            }
            for s in sockets[index] ?? [] {
                var unread: Int32 = 0
                if wb_socket_ioctl_int(s.rawValue, 0x541B /* SIOCINQ */, &unread) == 0 && unread > 0 {
                    var unspecified = sockaddr()
                    unspecified.sa_family = sa_family_t(AF_UNSPEC)
                    _ = connect(s.rawValue, &unspecified, socklen_t(MemoryLayout<sockaddr>.size))
                } else {
                    _ = shutdown(s.rawValue, Int32(SHUT_RDWR))
                }
                for (d, w) in writers where w === s {
                    writers[d] = nil
                    writers[Direction(channel: d.channel, forward: !d.forward)] = nil
                }
            }
            m.ended = 128 + SIGKILL
            delivered.append(Message(id: id, kind: .crash, from: index, to: index, bytes: [], cause: nil))
            return
        }
        guard !dropped.contains(id.channel), let a = senders[Direction(channel: id.channel, forward: true)],
              let b = senders[Direction(channel: id.channel, forward: false)] else {
            throw WBError.failed("fault \(id): the connection is not up")
        }
        dropped.insert(id.channel)
        pending[Direction(channel: id.channel, forward: true)] = nil
        pending[Direction(channel: id.channel, forward: false)] = nil
        _ = shutdown(a.socket.rawValue, Int32(SHUT_RDWR))
        _ = shutdown(b.socket.rawValue, Int32(SHUT_RDWR))
        delivered.append(Message(id: id, kind: .drop, from: a.member, to: b.member, bytes: [], cause: nil))
    }

    /// Restores a crashed member from its image again, on its host, while the others go on
    /// (as a crashed process restarted from its checkpoint): its connections to the other
    /// members come back reset (they saw it crash and closed theirs), so it finds its peers
    /// gone; the ones its crash left closing on its host are cleared away first, for their
    /// addresses. Connections it makes from then on are not mediated.
    private func restart(_ index: Int) throws {
        let old = members[index]
        old.restored.process.terminate()
        gone(old)
        for c in old.closing { try c.namespace.destroyTCP(local: c.local, peer: c.peer, family: c.family) }
        let r = try set.restore(old.restored.member, channels: false)
        let m = Member(index: index, restored: r)
        do {
            for t in m.processes {
                try t.addOptions(Tracee.traceSeccompOption | Tracee.exitKillOption)
                t.syscallGadget = try t.findSyscallGadget(in: try ProcFS.maps(t.pid, withFlags: false))
                let traced = MediatedSet.mappingCalls.map { ($0, UInt16(2)) } + (t === m.processes[0] ? MediatedSet.exits.map { ($0, UInt16(1)) } : [])
                try t.withSyscalls(in: t.pid) { s in
                    let scratch = try s.mapScratch(bytes: 4096)
                    defer { _ = try? s.raw(.munmap, scratch, 4096) }
                    try SeccompFilter(traced: traced).install(t, s, scratch: scratch)
                }
            }
        } catch {
            r.process.terminate()
            throw error
        }
        members[index] = m
        let note = "\(m.name) restarted from its snapshot: connections it makes are not mediated"
        if !unmediated.contains(note) { unmediated.append(note) }
        for t in m.processes { t.resumeAll() }
    }

    /// What a delivery of `m` is, for a schedule.
    public func describe(_ m: Message) -> Delivery {
        if m.kind != .data {
            let names: [Message.Kind: String] = [.close: "<close>", .shutdown: "<shutdown>", .drop: "<drop connection>", .crash: "<crash>",
                                                 .restart: "<restart>"]
            let what = names[m.kind] ?? ""
            return Delivery(message: m.id, from: members[m.from].name, to: members[m.to].name, bytes: 0, preview: what)
        }
        let preview = String(m.bytes.prefix(48).map { $0 >= 0x20 && $0 < 0x7F ? Character(UnicodeScalar($0)) : "." })
        return Delivery(message: m.id, from: members[m.from].name, to: members[m.to].name, bytes: m.bytes.count, preview: preview)
    }

    /// The deliveries made so far, as a schedule holds them.
    public var deliveries: [Delivery] { delivered.map(describe) }

    /// Runs `command` with `sh -c` while the members go on being served (a member that
    /// writes on a channel meanwhile is held as usual, so a command that talks to a member
    /// gets its answer); returns its exit status and output.
    public func runServing(_ command: String, environment: [String: String]) throws -> (status: Int32, output: String) {
        let file = try Subprocess.outputFile(for: command)
        let null = try FileDescriptor.open("/dev/null", O_RDONLY)
        let pid = try Subprocess.spawn("/bin/sh", ["-c", command], environment: environment, stdin: null.rawValue,
                                       stdout: file.rawValue, stderr: file.rawValue)
        var status: Int32?
        let alive = all.filter { !$0.tids.isEmpty }
        let saved = alive.first?.otherStop
        alive.first?.otherStop = { p, st in if p == pid { status = st } else { saved?(p, st) } }
        defer { alive.first?.otherStop = saved }
        while status == nil {
            if alive.allSatisfy({ $0.tids.isEmpty }) {
                var st: Int32 = 0
                while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
                status = st
                break
            }
            if let (t, tid, stop) = try Tracee.waitAny(among: alive.filter { !$0.tids.isEmpty }, timeout: 0.01) { try handle(t, tid, stop) }
        }
        // The command wrote through the same open file: read it from its start.
        _ = lseek(file.rawValue, 0, SEEK_SET)
        let text = String(decoding: (try? file.readAll(limit: 1 << 20)) ?? [], as: UTF8.self)
        return (Subprocess.exitCode(waitStatus: status ?? 0), text)
    }

    /// Names the state every alive member waits in with nothing in flight (a deadlock) or
    /// the run's natural end (every member exited).
    public var allEnded: Bool { members.allSatisfy { $0.ended != nil } }

    /// Stops the members where they are (for a debugger, or a check that reads them).
    public func stop(_ m: Member, alreadyStopped: Set<Int32> = []) throws {
        for t in m.processes where !t.tids.isEmpty { try t.stopAll(alreadyStopped: alreadyStopped) }
    }

    /// Lets a stopped member run on.
    public func resume(_ m: Member) {
        for t in m.processes where !t.tids.isEmpty { t.resumeAll() }
    }

    /// Ends every member and takes the hosts away.
    public func end() {
        // wb's copies of the sockets first: they would keep the hosts' namespaces alive.
        base = nil
        for s in sockets.values.flatMap({ $0 }) { s.close() }
        for m in members.reversed() { m.restored.process.terminate() }
        set.removeHosts()
    }
}
