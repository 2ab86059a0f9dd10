import Foundation
import Glibc
import WBTrace

/// Gives every restored thread the identity and confinement it had: user and group ids,
/// supplementary groups, all five capability sets, securebits, no_new_privs and its seccomp
/// filters, in their order. Never more privilege than the image had: each thread starts as
/// the stub (root's, when root restores) and only gives up what the image did not hold.
///
/// Per thread: bounding set, groups and gids; uids with PR_SET_KEEPCAPS so that the
/// permitted set survives; a capset that keeps every permitted capability effective for the
/// steps that need one (setfsuid, ambient, securebits, seccomp without no_new_privs);
/// ambient capabilities, securebits; then no_new_privs, the image's capability sets and the
/// seccomp filters, in the order that lets each one be installed. Filters every thread has
/// (installed with TSYNC, or inherited) are installed once by the leader with TSYNC, so the
/// threads share them again; a thread's own filters come after.
struct SecurityBuilder {
    let restorer: Restorer
    let tracee: Tracee
    let scratch: Scratch
    let process: ProcessState

    /// `threads`: every thread with its syscalls, the leader last.
    func build(_ threads: [(ThreadState, RemoteSyscalls)]) throws {
        let c = process.credentials
        let root = geteuid() == 0
        let stub = try ProcFS.status(tracee.pid)
        let stubCaps = ProcFS.capabilities(stub)
        let stubPermitted = stubCaps.permitted, stubBounding = stubCaps.bounding
        let sameIds = c.uid.allSatisfy { $0 == getuid() } && c.gid.allSatisfy { $0 == getgid() }
        if !root && !sameIds {
            restorer.note("the process ran as uid \(c.uid[1]); it runs as uid \(geteuid()) here (restore as root to keep it)", about: process)
        }
        let last = Capabilities.last, known = Capabilities.known
        // Phase one: ids and capabilities, with every permitted capability still effective.
        for (t, s) in threads {
            scratch.reset()
            guard root else { continue }
            let sec = t.security
            if let b = sec?.capabilities.bounding {
                for cap in 0...last where b & (1 << UInt64(cap)) == 0 && stubBounding & (1 << UInt64(cap)) != 0 {
                    try s.call(.prctl, 24 /* PR_CAPBSET_DROP */, UInt64(cap), what: "dropping capability \(cap) from the bounding set of thread \(t.tid)")
                }
                if b & known & ~stubBounding != 0 {
                    restorer.note("thread \(t.tid) had capabilities in its bounding set that wb's own lacks (0x\(String(b & known & ~stubBounding, radix: 16))); they stay out", about: process)
                }
            }
            let groups = try scratch.put(words32: c.groups)
            try s.call(.setgroups, UInt64(c.groups.count), groups, what: "setting the supplementary groups of thread \(t.tid)")
            try s.call(.setresgid, UInt64(c.gid[0]), UInt64(c.gid[1]), UInt64(c.gid[2]), what: "setting the group ids of thread \(t.tid)")
            if sec != nil { try s.call(.prctl, 8 /* PR_SET_KEEPCAPS */, 1, what: "keeping the capabilities of thread \(t.tid)") }
            try s.call(.setresuid, UInt64(c.uid[0]), UInt64(c.uid[1]), UInt64(c.uid[2]), what: "setting the user ids of thread \(t.tid)")
            guard let sec else { continue }
            try Capabilities.set(s, scratch, effective: stubPermitted, permitted: stubPermitted,
                                 inheritable: sec.capabilities.inheritable & known,
                                 what: "setting the inheritable capabilities of thread \(t.tid)")
            if c.gid.count > 3 { _ = try s.raw(.setfsgid, UInt64(c.gid[3])) }
            if c.uid.count > 3 { _ = try s.raw(.setfsuid, UInt64(c.uid[3])) }
            for cap in 0...last where sec.capabilities.ambient & (1 << UInt64(cap)) != 0 {
                try s.call(.prctl, 47 /* PR_CAP_AMBIENT */, 2 /* RAISE */, UInt64(cap), what: "raising ambient capability \(cap) of thread \(t.tid)")
            }
            try s.call(.prctl, 28 /* PR_SET_SECUREBITS */, UInt64(sec.securebits), what: "setting the securebits of thread \(t.tid)")
        }
        // Changing credentials cleared dumpable and the parent-death signal: set them now,
        // in the leader. The parent-death signal only where the parent is restored too (a
        // tree's member): the parent of a single restored process is wb.
        if let k = process.knobs, let (_, leader) = threads.last {
            scratch.reset()
            if k.dumpable <= 1 { _ = try leader.raw(.prctl, 4 /* PR_SET_DUMPABLE */, UInt64(k.dumpable)) }
            if k.parentDeathSignal != 0 {
                if process.pid != restorer.image.process.pid {
                    try leader.call(.prctl, 1 /* PR_SET_PDEATHSIG */, UInt64(k.parentDeathSignal), what: "setting the parent-death signal")
                } else {
                    restorer.note("the process asked for signal \(k.parentDeathSignal) when its parent dies (PR_SET_PDEATHSIG); its parent is not restored with it, so that is not set", about: process)
                }
            }
        }
        // Phase two: no_new_privs and the final capability sets where the filters that follow
        // need no privilege; the filters every thread shares; each thread's own; the rest.
        var late: [Int32] = []
        for (t, s) in threads {
            scratch.reset()
            guard let sec = t.security else { continue }
            let canFilterAfter = sec.noNewPrivs || sec.capabilities.effective & (1 << 21 /* CAP_SYS_ADMIN */) != 0 || !root
            if !sec.seccompFilters.isEmpty && !sec.noNewPrivs && !root {
                restorer.note("thread \(t.tid) had seccomp filters without no_new_privs; restored by a user without CAP_SYS_ADMIN, it has no_new_privs set as well", about: process)
            }
            if sec.noNewPrivs || (!sec.seccompFilters.isEmpty && !root) {
                try s.call(.prctl, 38 /* PR_SET_NO_NEW_PRIVS */, 1, 0, 0, 0, what: "setting no_new_privs of thread \(t.tid)")
            }
            if canFilterAfter { try finalCapabilities(t, s, root: root) } else { late.append(t.tid) }
        }
        let filters = threads.map { $0.0.security?.seccompFilters ?? [] }
        var shared = 0
        if threads.count > 1 {
            while filters.allSatisfy({ $0.count > shared && $0[shared] == filters[0][shared] }) { shared += 1 }
        }
        if let (_, leader) = threads.last {
            for f in filters[0].prefix(shared) {
                scratch.reset()
                try install(f, in: leader, tsync: true, what: "installing a seccomp filter every thread of pid \(process.pid) shares")
            }
        }
        for (i, (t, s)) in threads.enumerated() {
            for f in filters[i].dropFirst(shared) {
                scratch.reset()
                try install(f, in: s, tsync: false, what: "installing a seccomp filter of thread \(t.tid)")
            }
            if late.contains(t.tid) {
                scratch.reset()
                do { try finalCapabilities(t, s, root: root) } catch {
                    throw WBError.failed("thread \(t.tid)'s seccomp filters refuse the capset wb makes after them to give it its capabilities: \(error)")
                }
            }
        }
    }

    private func finalCapabilities(_ t: ThreadState, _ s: RemoteSyscalls, root: Bool) throws {
        guard root, let caps = t.security?.capabilities else { return }
        let known = Capabilities.known
        try Capabilities.set(s, scratch, effective: caps.effective & known, permitted: caps.permitted & known,
                             inheritable: caps.inheritable & known, what: "setting the capabilities of thread \(t.tid)")
    }

    private func install(_ program: Data, in s: RemoteSyscalls, tsync: Bool, what: String) throws {
        let code = try scratch.put([UInt8](program))
        var fprog: [UInt8] = []
        withUnsafeBytes(of: UInt64(program.count / 8).littleEndian) { fprog += $0 }
        withUnsafeBytes(of: code.littleEndian) { fprog += $0 }
        let at = try scratch.put(fprog)
        let r = try s.raw(.seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, tsync ? 1 /* TSYNC */ : 0, at)
        if r > 0 { throw WBError.failed("\(what): thread \(r) cannot be synchronized with it") }
        if r < 0 { throw WBError.system(call: "remote seccomp(SECCOMP_SET_MODE_FILTER)", errno: Int32(-r), what: what) }
    }

    /// Reads back what the kernel holds for every thread and compares it with the image: a
    /// difference is an error naming the thread and the field, never a silent one.
    func audit(_ tids: [(ThreadState, Int32)]) throws {
        let root = geteuid() == 0
        for (t, tid) in tids {
            guard let status = try? ProcFS.status(tracee.pid, thread: tid) else { continue }
            var wrong: [String] = []
            func ids(_ key: String) -> [UInt32] { (status[key] ?? "").split(whereSeparator: { $0 == "\t" || $0 == " " }).compactMap { UInt32($0) } }
            if root {
                let c = process.credentials
                if Array(ids("Uid").prefix(c.uid.count)) != c.uid { wrong.append("Uid \(ids("Uid")) (the image has \(c.uid))") }
                if Array(ids("Gid").prefix(c.gid.count)) != c.gid { wrong.append("Gid \(ids("Gid")) (the image has \(c.gid))") }
                if Set(ids("Groups")) != Set(c.groups) { wrong.append("Groups \(ids("Groups")) (the image has \(c.groups))") }
            }
            if let sec = t.security {
                let known = Capabilities.known, here = ProcFS.capabilities(status), want = sec.capabilities
                if root {
                    for (key, got, wanted) in [("CapInh", here.inheritable, want.inheritable), ("CapPrm", here.permitted, want.permitted),
                                               ("CapEff", here.effective, want.effective), ("CapAmb", here.ambient, want.ambient)]
                    where got != wanted & known {
                        wrong.append("\(key) \(String(got, radix: 16)) (the image has \(String(wanted, radix: 16)))")
                    }
                    if here.bounding & ~(want.bounding & known) != 0 {
                        wrong.append("CapBnd \(String(here.bounding, radix: 16)) (the image has \(String(want.bounding, radix: 16)))")
                    }
                }
                if sec.noNewPrivs && status["NoNewPrivs"] != "1" { wrong.append("NoNewPrivs \(status["NoNewPrivs"] ?? "?")") }
                if "\(sec.seccompMode)" != (status["Seccomp"] ?? "0") { wrong.append("Seccomp \(status["Seccomp"] ?? "?") (the image has \(sec.seccompMode))") }
                if "\(sec.seccompFilters.count)" != (status["Seccomp_filters"] ?? "0") {
                    wrong.append("Seccomp_filters \(status["Seccomp_filters"] ?? "?") (the image has \(sec.seccompFilters.count))")
                }
            }
            if !wrong.isEmpty {
                throw WBError.failed("thread \(t.tid) came back with other security state than the image holds: \(wrong.joined(separator: ", "))")
            }
        }
    }
}
