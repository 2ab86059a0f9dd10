import Foundation
import Glibc
import WBTrace

/// Opens the files an image names as the image's process would have opened them. Privilege is
/// the image's, never the restorer's: when root restores an image of a process that ran as
/// another user (or as root without every capability), every path from the image is looked up
/// and opened inside the stub with the process's filesystem ids, groups and effective
/// capabilities, so a forged image cannot make root open a file for it. Files wb unpacked
/// from the image itself (its cache) are the image's own and opened as they are.
final class FileAccess {
    private let leader: RemoteSyscalls
    private let scratch: Scratch
    private let cacheDirectory: String
    /// What the stub has now (root's), to go back to after each open.
    private let stubCaps: (effective: UInt64, permitted: UInt64, inheritable: UInt64)
    private let stubGroups: [UInt32]
    /// The image's, for opens; nil when they are the stub's already.
    private let image: (fsuid: UInt32, fsgid: UInt32, groups: [UInt32], effective: UInt64)?
    /// The process's effective user and group ids, for making its sockets (as root).
    private let identity: (uid: UInt32, gid: UInt32)?

    init(process p: ProcessState, tracee: Tracee, leader: RemoteSyscalls, scratch: Scratch, cacheDirectory: String) throws {
        self.leader = leader
        self.scratch = scratch
        self.cacheDirectory = Paths.absolute(cacheDirectory)
        let status = try ProcFS.status(tracee.pid)
        let caps = ProcFS.capabilities(status)
        stubCaps = (caps.effective, caps.permitted, caps.inheritable)
        var groups = [gid_t](repeating: 0, count: 65536)
        let n = getgroups(Int32(groups.count), &groups)
        stubGroups = n > 0 ? Array(groups[0..<Int(n)]) : []
        let c = p.credentials
        let fsuid = c.uid.count > 3 ? c.uid[3] : c.uid[1], fsgid = c.gid.count > 3 ? c.gid[3] : c.gid[1]
        let effective = p.threads.first { $0.tid == p.pid }?.security?.capabilities.effective ?? (fsuid == 0 ? stubCaps.effective : 0)
        let same = fsuid == 0 && fsgid == 0 && effective & stubCaps.effective == stubCaps.effective
        image = geteuid() == 0 && !same ? (fsuid, fsgid, c.groups, effective & stubCaps.permitted) : nil
        identity = geteuid() == 0 ? (c.uid[1], c.gid[1]) : nil
    }

    /// Runs `body` (remote calls making, connecting or listening on sockets) with the
    /// process's effective user and group ids: a Unix socket's peer sees its maker's as its
    /// credentials (SO_PEERCRED), and a socket belongs to its maker's uid.
    @discardableResult
    func asProcessIdentity<T>(_ body: () throws -> T) throws -> T {
        guard let (uid, gid) = identity, uid != 0 || gid != 0 else { return try body() }
        let none = UInt64(UInt32.max)
        try leader.call(.setresgid, none, UInt64(gid), none, what: "taking the process's group id to make its sockets")
        try leader.call(.setresuid, none, UInt64(uid), none, what: "taking the process's user id to make its sockets")
        defer {
            // Back to root's (the saved ids are 0): uid first, which gives the capabilities
            // setresgid needs back.
            _ = try? leader.raw(.setresuid, none, 0, none)
            _ = try? leader.raw(.setresgid, none, 0, none)
        }
        return try body()
    }

    /// Runs `body` (a remote call looking up `path`) with the process's file identity.
    func asProcess<T>(path: String, _ body: () throws -> T) throws -> T {
        guard let id = image, !path.hasPrefix(cacheDirectory + "/") else { return try body() }
        try set(groups: id.groups, fsgid: id.fsgid, fsuid: id.fsuid, effective: id.effective)
        do {
            let result = try body()
            try set(groups: stubGroups, fsgid: 0, fsuid: 0, effective: stubCaps.effective)
            return result
        } catch {
            try? set(groups: stubGroups, fsgid: 0, fsuid: 0, effective: stubCaps.effective)
            if case let WBError.system(_, code, _) = error, code == EACCES || code == EPERM {
                throw WBError.refused("\(path): the restored process (fsuid \(id.fsuid), fsgid \(id.fsgid)) may not open it, and wb does not open files for it with its own privilege: \(error)")
            }
            throw error
        }
    }

    /// Groups, then the filesystem ids, then the effective capabilities (the fs ones are
    /// cleared by a non-zero fsuid and come back with fsuid 0); capset last on the way in,
    /// first on the way out, so CAP_SETUID is there for setfsuid.
    private func set(groups: [UInt32], fsgid: UInt32, fsuid: UInt32, effective: UInt64) throws {
        let leaving = fsuid == 0
        if leaving { try capset(effective) }
        let list = try scratch.put(words32: groups)
        try leader.call(.setgroups, UInt64(groups.count), list, what: "setting the groups files are opened with")
        _ = try leader.raw(.setfsgid, UInt64(fsgid))
        _ = try leader.raw(.setfsuid, UInt64(fsuid))
        if !leaving { try capset(effective) }
    }

    private func capset(_ effective: UInt64) throws {
        try Capabilities.set(leader, scratch, effective: effective, permitted: stubCaps.permitted,
                             inheritable: stubCaps.inheritable, what: "setting the capabilities files are opened with")
    }
}

/// capset(2) with the version 3 header (two 32-bit words per set).
enum Capabilities {
    static func set(_ s: RemoteSyscalls, _ scratch: Scratch, effective: UInt64, permitted: UInt64, inheritable: UInt64,
                    what: String) throws {
        func lo(_ v: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: v) }
        func hi(_ v: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: v >> 32) }
        let words: [UInt32] = [0x2008_0522, 0,   // _LINUX_CAPABILITY_VERSION_3, pid 0 (this thread)
                               lo(effective), lo(permitted), lo(inheritable), hi(effective), hi(permitted), hi(inheritable)]
        let at = try scratch.put(words32: words)
        try s.call(.capset, at, at + 8, what: what)
    }

    /// The highest capability number this kernel knows (read once).
    static let last: Int = Int(((try? Paths.readText("/proc/sys/kernel/cap_last_cap")) ?? "40").trimming("\n")) ?? 40

    /// The capabilities this kernel knows, bit n for capability n: image bits beyond them
    /// are none the kernel could hold.
    static let known: UInt64 = last >= 63 ? ~0 : (UInt64(1) << UInt64(last + 1)) - 1
}
