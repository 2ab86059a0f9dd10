import Foundation
import Glibc
import WBTrace

/// Kernel objects that several processes of a restored tree (or several fds of one process)
/// must hold as one: open file descriptions, pipes, socket pairs, shared memory.
///
/// The first process that needs an object creates it and keeps a copy of its fd, above the
/// image's fd numbers; every later one takes that copy with pidfd_getfd, so they share the
/// very object, as after the original fork. The copies are closed once every process has its
/// fds, before any of them runs.
final class SharedObjects {
    struct Entry {
        /// The owner's pid as the processes see it (they share a pid namespace).
        var owner: Int32
        /// The owner's pid as wb sees it.
        var host: Int32
        var fd: Int32
        /// For shared memory: the original file offset the new object's offset 0 stands for.
        var offset: UInt64
    }

    private var entries: [String: Entry] = [:]
    /// System V segments made so far (by id): they live in the restored processes' IPC
    /// namespace, so every process reaches them by id, with no fd to pass.
    var segments = Set<Int32>()
    private var kept: [Int32: [Int32]] = [:]
    /// Bytes (or messages) queued on every socket pair end of the image, by inode (a pair is
    /// made, and filled, by whichever process needs one of its ends first).
    let socketQueues: [UInt64: (bytes: Data, messages: [Data])]
    /// The image holds a process tree.
    let tree: Bool

    /// Images written before fds of deleted files and memfds recorded their identity.
    private let objectsByContent: Bool

    /// The key of a deleted file or memfd, mapped shared or open as an fd: its identity on
    /// the checkpoint host, so two objects that happen to hold the same bytes (two empty
    /// memfds) stay two; older images have only the contents to go by.
    func fileKey(identity: String?, content: ContentHash) -> String {
        if objectsByContent { return "file:\(content)" }
        return identity.map { "file:\($0)" } ?? "file:\(content)"
    }

    func fileKey(of m: Mapping, content: ContentHash) -> String {
        fileKey(identity: m.file.map { "\($0.device):\($0.inode)" }, content: content)
    }

    init(image: Image) {
        tree = !(image.metadata.descendants ?? []).isEmpty
        objectsByContent = image.metadata.processes.contains { $0.fds.contains { $0.kind == .deletedFile && $0.object == nil } }
        var queues: [UInt64: (bytes: Data, messages: [Data])] = [:]
        for p in image.metadata.processes {
            for f in p.fds { if let s = f.socket { queues[s.inode] = (s.queued, s.messages ?? []) } }
        }
        socketQueues = queues
    }

    func entry(_ key: String) -> Entry? { entries[key] }

    /// The first fd number wb may use freely in a process: above all of the image's.
    static func base(of process: ProcessState) -> Int32 { max(3, (process.fds.map(\.fd).max() ?? 0) + 1) }

    /// A new fd, in the process `leader` runs in, for the object kept under `key`; nil when
    /// no process has made it yet.
    func fetch(_ key: String, into leader: RemoteSyscalls, above base: Int32) throws -> Int32? {
        guard let e = entries[key] else { return nil }
        if e.host == leader.tracee.pid {
            return Int32(try leader.call(.fcntl, UInt64(e.fd), 1030 /* F_DUPFD_CLOEXEC */, UInt64(base), what: "sharing \(key)"))
        }
        let pidfd = try leader.call(.pidfdOpen, UInt64(e.owner), 0, what: "opening pid \(e.owner) to share \(key)")
        defer { _ = try? leader.raw(.close, pidfd) }
        return Int32(try leader.call(.pidfdGetfd, pidfd, UInt64(e.fd), 0, what: "taking \(key) from pid \(e.owner)"))
    }

    /// Keeps a copy of `fd` (of the process `leader` runs in, pid `pid` as it sees itself)
    /// for the processes restored after it.
    func keep(_ key: String, fd: Int32, offset: UInt64 = 0, leader: RemoteSyscalls, pid: Int32, above base: Int32) throws {
        let copy = Int32(try leader.call(.fcntl, UInt64(fd), 1030, UInt64(base), what: "keeping \(key)"))
        entries[key] = Entry(owner: pid, host: leader.tracee.pid, fd: copy, offset: offset)
        kept[leader.tracee.pid, default: []].append(copy)
    }

    /// Closes the copies kept in the process `leader` runs in.
    func closeKept(in leader: RemoteSyscalls) throws {
        for fd in kept[leader.tracee.pid] ?? [] { _ = try leader.raw(.close, UInt64(fd)) }
        kept[leader.tracee.pid] = nil
    }
}
