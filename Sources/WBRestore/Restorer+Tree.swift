import Foundation
import Glibc
import WBTrace

/// The processes of a tree, started as empty stubs before any of them is rebuilt: each
/// child is forked by its parent's stub (clone3 with the child's original pid), so parent
/// and child links are the kernel's own. Sessions are made before a leader's children are
/// forked (a session is inherited only at fork), process groups once every process exists,
/// and children that had exited but were not reaped exit again, with their status, to wait
/// in their parent for it.
///
/// A child that shared pages with its parent copy-on-write (InheritedMemory) is forked
/// later instead, from its parent once the parent's pages are in (`forkLate`), and so is
/// everything below it; their groups and zombies are settled once all are built
/// (`settleLate`).
extension Restorer {
    /// The processes forked from their rebuilt parents (`late`), and what each keeps of its
    /// parent's memory.
    func planLateForks() -> (late: Set<Int32>, inherited: [Int32: InheritedMemory]) {
        guard !options.mapPages else { return ([], [:]) }
        let all = image.metadata.processes
        var late = Set<Int32>(), inherited: [Int32: InheritedMemory] = [:]
        for p in image.metadata.descendants ?? [] {
            guard let parent = all.first(where: { $0.pid == p.ppid }) else { continue }
            if p.zombieStatus == nil, parent.zombieStatus == nil, let plan = InheritedMemory(child: p, parent: parent) {
                inherited[p.pid] = plan
                late.insert(p.pid)
            } else if late.contains(parent.pid) {
                late.insert(p.pid)
            }
        }
        // A zombie in the group of a process forked late joins it once that exists.
        for p in image.metadata.descendants ?? [] where p.zombieStatus != nil && late.contains(p.pgid) { late.insert(p.pid) }
        return (late, inherited)
    }

    func startTree(root: Tracee, newNamespace: Bool, late: Set<Int32> = []) throws -> [(ProcessState, Tracee)] {
        var tracees: [Int32: Tracee] = [process.pid: root]
        var members: [(ProcessState, Tracee)] = [(process, root)]
        try openSession(process, root)
        for p in image.metadata.descendants ?? [] where !late.contains(p.pid) {
            guard let parent = tracees[p.ppid] else {
                throw WBError.badImage(path: image.path, problem: "invalid metadata: process \(p.pid)'s parent \(p.ppid) comes after it or is not in the image")
            }
            let host = try fork(p.pid, from: parent, sharing: cloneSharing(p), newNamespace: newNamespace)
            let t = try Tracee.adoptStub(host)
            tracees[p.pid] = t
            members.append((p, t))
            try settleForked(p, t)
        }
        // A group led by a process forked later is joined then (settleLate).
        try joinGroupsAndExit(members.filter { !late.contains($0.0.pgid) }, existing: Set(tracees.keys))
        return members
    }

    /// What a forked process shares with its parent: its fd table (CLONE_FILES) or its
    /// working directory, root and umask (CLONE_FS), as it did; a zombie nothing.
    private func cloneSharing(_ p: ProcessState) -> UInt64 {
        p.zombieStatus != nil ? 0 : (p.sharesParentFiles == true ? 0x400 : 0) | (p.sharesParentFS == true ? 0x200 : 0)
    }

    /// A process just forked: its own UTS namespace if it had one, then its session or
    /// group, before it forks its own children.
    private func settleForked(_ p: ProcessState, _ t: Tracee) throws {
        if p.zombieStatus == nil, p.uts != image.metadata.processes.first(where: { $0.pid == p.ppid })?.uts { try ownUTS(p, t) }
        try openSession(p, t)
    }

    /// `members` join the process groups they were in (a group led outside the tree, when
    /// the tree's `existing` pids do not hold its leader, is noted and the parent's kept),
    /// then those that had exited exit again.
    private func joinGroupsAndExit(_ members: [(ProcessState, Tracee)], existing: Set<Int32>) throws {
        for (p, t) in members where p.pgid != p.pid && p.sid != p.pid {
            guard existing.contains(p.pgid) else {
                if p.pid != process.pid && p.pgid != image.metadata.processes.first(where: { $0.pid == p.ppid })?.pgid {
                    notes.append("pid \(p.pid) was in process group \(p.pgid), which was outside the tree; it joins its parent's")
                }
                continue
            }
            let s = try t.ownedSyscalls(in: t.pid)
            try s.call(.setpgid, 0, UInt64(p.pgid), what: "joining process group \(p.pgid)")
        }
        for (p, t) in members {
            if let status = p.zombieStatus { try exit(t, as: p, status: status) }
        }
    }

    /// Forks the late child `p` from its parent `parent`, whose pages are in (its work area
    /// `scratch`): clone3 through the `syscall` of Scratch.forkCode, after which the child
    /// waits in that code's pause loop, with the parent's pages and wb's work area as the
    /// fork left them, until wb takes it. A child with a fd table of its own closes the fds
    /// the parent held for its rebuild. Its session is made before its own children are forked.
    func forkLate(_ p: ProcessState, from parent: Tracee, leader: RemoteSyscalls, scratch: Scratch) throws -> (ProcessState, Tracee) {
        let saved = parent.syscallGadget
        parent.syscallGadget = scratch.base + Scratch.forkCodeOffset
        defer { parent.syscallGadget = saved }
        let host = try fork(p.pid, from: parent, sharing: cloneSharing(p), newNamespace: treeInNewNamespace, leader: leader, scratch: scratch)
        let t = try Tracee.adoptStub(host)
        t.syscallGadget = scratch.base          // its copy of the parent's `syscall; int3`
        lateWorkAreas[t.pid] = scratch.base + 2048
        lateMembers.append((p, t))
        let s = try t.ownedSyscalls(in: t.pid)
        if p.zombieStatus == nil && p.sharesParentFiles != true {
            try s.call(.closeRange, 3, UInt64(UInt32.max), 0, what: "closing the fds pid \(p.pid) got from its parent's rebuild")
        }
        try settleForked(p, t)
        return (p, t)
    }

    /// Once every process exists: those forked late join their process groups (and those
    /// forked first, groups led by a late one), and the late ones that had exited exit again.
    func settleLate(_ members: [(ProcessState, Tracee)]) throws {
        let late = Set(lateMembers.map(\.0.pid))
        try joinGroupsAndExit(members.filter { late.contains($0.0.pid) || (late.contains($0.0.pgid) && $0.0.zombieStatus == nil) },
                              existing: Set(members.map(\.0.pid)))
    }

    /// Memory of the process wb may write call arguments to: below the stub's stack, or in a
    /// late child, its copy of its parent's work area.
    private func workArea(_ t: Tracee, _ s: RemoteSyscalls) -> UInt64 {
        lateWorkAreas[t.pid] ?? ((s.original.rsp - 2048) & ~UInt64(15))
    }

    /// A UTS namespace of its own with the image's host and domain name, for a process
    /// that had one (before it forks: its children share it).
    func ownUTS(_ p: ProcessState, _ t: Tracee) throws {
        guard let uts = p.uts else { return }
        if t.syscallGadget == 0 { t.syscallGadget = Stub.syscallAddress }
        let s = try t.ownedSyscalls(in: t.pid)
        let r = try s.raw(.unshare, 0x0400_0000 /* CLONE_NEWUTS */)
        if r < 0 {
            throw WBError.system(call: "remote unshare(CLONE_NEWUTS)", errno: Int32(-r),
                                 what: "giving pid \(p.pid) its UTS namespace (host name \(uts.hostname); needs CAP_SYS_ADMIN: run wb restore as root)")
        }
        let at = workArea(t, s)
        let host = Array(uts.hostname.utf8.prefix(64)), domain = Array(uts.domainname.utf8.prefix(64))
        try t.write(host + [0] + domain + [0], to: at)
        try s.call(.sethostname, at, UInt64(host.count), what: "setting the host name \(uts.hostname)")
        try s.call(.setdomainname, at + UInt64(host.count) + 1, UInt64(domain.count), what: "setting the domain name \(uts.domainname)")
    }

    /// A session or process group of its own, when the process led one.
    func openSession(_ p: ProcessState, _ t: Tracee) throws {
        if t.syscallGadget == 0 { t.syscallGadget = Stub.syscallAddress }
        let s = try t.ownedSyscalls(in: t.pid)
        if p.sid == p.pid {
            try s.call(.setsid, what: "starting the session of pid \(p.pid)")
        } else if p.pgid == p.pid {
            try s.call(.setpgid, 0, 0, what: "starting the process group of pid \(p.pid)")
        }
    }

    /// A single process keeps a session it led (a daemon's, which has no controlling
    /// terminal), as openSession gives a tree's; a process group it led without its session,
    /// or a session with a terminal, it cannot have in wb's terminal without taking it from
    /// wb, so it joins wb's, with a note.
    func ownSessionOrGroup(_ p: ProcessState, _ t: Tracee) throws {
        let terminal = p.fds.contains { $0.kind == .tty }
        if p.sid == p.pid && !terminal {
            try openSession(p, t)
        } else if p.sid == p.pid || p.pgid == p.pid {
            notes.append("the process led its own \(p.sid == p.pid ? "session" : "process group") (\(p.pid)); restored, it is in wb's (\(getpgrp())), where the terminal's job control reaches it")
        }
    }

    /// Forks a stub child with pid `pid` from the stub `parent` (sharing its fd table or its
    /// fs information with `sharing`: CLONE_FILES, CLONE_FS); returns its pid as wb sees it.
    /// The child goes on in the stub's pause loop until wb takes it.
    private func fork(_ pid: Int32, from parent: Tracee, sharing: UInt64, newNamespace: Bool,
                      leader: RemoteSyscalls? = nil, scratch: Scratch? = nil) throws -> Int32 {
        let s = try leader ?? parent.ownedSyscalls(in: parent.pid)
        // clone_args and the pid go on the stub's stack, well below where it is (or in the
        // rebuilt parent's work area).
        let at = scratch.map { ($0.base + Scratch.bytes - 8192) } ?? ((s.original.rsp - 1024) & ~UInt64(15))
        var bytes: [UInt8] = []
        let words: [UInt64] = [sharing, 0, 0, 0, UInt64(SIGCHLD), 0, 0, 0, at + 88, 1, 0, UInt64(UInt32(bitPattern: pid))]
        for w in words { withUnsafeBytes(of: w.littleEndian) { bytes += $0 } }
        try parent.write(bytes, to: at)
        let r = try s.raw(.clone3, at, 88)
        if r < 0 {
            if r == -Int64(EEXIST) { throw WBError.failed("pid \(pid) is in use here; try --new-pidns") }
            throw WBError.system(call: "remote clone3", errno: Int32(-r), what: "starting pid \(pid) of the tree")
        }
        guard newNamespace else { return Int32(r) }
        for child in ProcFS.children(parent.pid) {
            if ProcFS.innermostPid(child) == pid { return child }
        }
        throw WBError.failed("pid \(pid) of the tree was started but cannot be found from here")
    }

    /// Ends a stub as the process it stands for ended: exit_group with its code, or the
    /// signal that killed it (no core file). wb collects the end as its tracer; the zombie
    /// then waits for its parent.
    private func exit(_ t: Tracee, as p: ProcessState, status: Int32) throws {
        // Its name, as ps shows the zombie.
        let s = try t.ownedSyscalls(in: t.pid)
        let name = workArea(t, s)
        try t.write(Array(p.comm.utf8.prefix(15)) + [0], to: name)
        _ = try s.raw(.prctl, 15 /* PR_SET_NAME */, name)
        let signal = status & 0x7f
        if signal == 0 {
            var r = try t.registers(t.pid)
            r.rax = UInt64(SyscallNumber.exitGroup.rawValue)
            r.rdi = UInt64((status >> 8) & 0xff)
            r.rip = t.syscallGadget
            r.origRax = UInt64.max
            try t.setRegisters(t.pid, r)
        } else {
            try? ResourceLimits.set(pid: t.pid, resource: 4 /* RLIMIT_CORE */, soft: 0, hard: 0)
            _ = kill(t.pid, signal)
        }
        try t.resume(t.pid, .continue)
        while true {
            switch try t.wait(t.pid) {
            case .exited, .killed: return
            case let .signal(sig): try t.resume(t.pid, .continue, signal: sig)
            case .interrupted, .event: try t.resume(t.pid, .continue)
            }
        }
    }
}
