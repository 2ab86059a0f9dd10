import CWBNative
import Glibc

/// Pipe helpers: reading what a pipe holds without taking it, and sizing pipes.
public enum Pipes {
    public static let getSize: Int32 = 1032   // F_GETPIPE_SZ
    public static let setSize: Int32 = 1031   // F_SETPIPE_SZ

    /// The bytes buffered in the pipe or FIFO that `path` opens (a /proc/PID/fd/N link),
    /// copied with tee(2) so the pipe keeps them, and the pipe's capacity.
    public static func peek(_ path: String) throws -> (bytes: [UInt8], capacity: Int32) {
        let src = try FileDescriptor.open(path, O_RDONLY | O_NONBLOCK, what: "opening the pipe \(path)")
        var capacity: Int32 = 0
        try check(wb_fcntl_int(src.rawValue, getSize, 0, &capacity), "fcntl(F_GETPIPE_SZ)", "reading the size of pipe \(path)")
        var fds: [Int32] = [0, 0]
        try check(wb_pipe2(&fds, O_NONBLOCK | O_CLOEXEC), "pipe2", "creating a pipe")
        let r = FileDescriptor(owning: fds[0]), w = FileDescriptor(owning: fds[1])
        var ignored: Int32 = 0
        _ = wb_fcntl_int(w.rawValue, setSize, capacity, &ignored)
        var copied = 0
        let e = wb_tee(src.rawValue, w.rawValue, Int(capacity), 2 /* SPLICE_F_NONBLOCK */, &copied)
        if e == EAGAIN { return ([], capacity) }
        try check(e, "tee", "copying the buffered bytes of pipe \(path)")
        w.close()
        let bytes = try r.readAll(limit: copied)
        return (bytes, capacity)
    }

    /// A new pipe (read end, write end), close-on-exec.
    public static func make() throws -> (read: FileDescriptor, write: FileDescriptor) {
        var fds: [Int32] = [0, 0]
        try check(wb_pipe2(&fds, O_CLOEXEC), "pipe2", "creating a pipe")
        return (FileDescriptor(owning: fds[0]), FileDescriptor(owning: fds[1]))
    }

    public static func setCapacity(_ fd: FileDescriptor, _ capacity: Int32) throws {
        var result: Int32 = 0
        try check(wb_fcntl_int(fd.rawValue, setSize, capacity, &result), "fcntl(F_SETPIPE_SZ)", "sizing a pipe to \(capacity) bytes")
    }
}
