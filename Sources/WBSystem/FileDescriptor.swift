import CWBNative
import Glibc

/// An owned file descriptor: closed when the last reference goes away.
public final class FileDescriptor: @unchecked Sendable {
    public let rawValue: Int32
    private var closed = false

    public init(owning fd: Int32) { rawValue = fd }

    deinit { if !closed { _ = Glibc.close(rawValue) } }

    /// open(2). `path` appears in errors.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644,
                            what: @autoclosure () -> String = "") throws -> FileDescriptor {
        let fd = try syscallValue("open(\(path))", what().isEmpty ? "opening \(path)" : what()) {
            Glibc.open(path, flags | O_CLOEXEC, mode)
        }
        return FileDescriptor(owning: fd)
    }

    public func close() {
        if !closed { _ = Glibc.close(rawValue); closed = true }
    }

    /// A second descriptor of the same open file (fcntl F_DUPFD_CLOEXEC).
    public func duplicate() throws -> FileDescriptor {
        var out: Int32 = -1
        let e = wb_fcntl_int(rawValue, F_DUPFD_CLOEXEC, 3, &out)
        if e != 0 { throw WBError.system(call: "fcntl(F_DUPFD_CLOEXEC)", errno: e, what: "copying fd \(rawValue)") }
        return FileDescriptor(owning: out)
    }

    /// Bytes waiting to be read (ioctl FIONREAD: a socket's, a pipe's, an inotify instance's
    /// events); 0 when the file cannot tell.
    public var queuedBytes: Int {
        var n: Int32 = 0
        return wb_socket_ioctl_int(rawValue, 0x541B /* FIONREAD */, &n) == 0 ? Int(max(n, 0)) : 0
    }

    /// Hands the descriptor over: this object no longer closes it.
    public func release() -> Int32 { closed = true; return rawValue }

    public var size: UInt64 {
        get throws { try stat().size }
    }

    public struct Status: Sendable, Equatable {
        public var device: UInt64, inode: UInt64, size: UInt64, mode: UInt32
        public var mtimeSeconds: Int64, mtimeNanoseconds: Int64
        public var uid: UInt32 = 0, gid: UInt32 = 0
        public var isRegular: Bool { mode & S_IFMT == S_IFREG }
        public var isFIFO: Bool { mode & S_IFMT == S_IFIFO }
        public var isCharDevice: Bool { mode & S_IFMT == S_IFCHR }
        public var isDirectory: Bool { mode & S_IFMT == S_IFDIR }
    }

    public func stat() throws -> Status {
        var st = Glibc.stat()
        try syscallValue("fstat", "reading file status") { fstat(rawValue, &st) }
        return Status(st)
    }

    /// Reads exactly `count` bytes at `offset` into `buffer` (fewer only at end of file), with
    /// pread(2).
    @discardableResult
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        var done = 0
        while done < buffer.count {
            let at = try FileDescriptor.fileOffset(offset, done, "pread", "reading")
            let n = try syscallValue("pread", "reading at offset \(at)") {
                pread(rawValue, buffer.baseAddress! + done, buffer.count - done, at)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// `offset + done` as the off_t pread/pwrite take. The kernel's offsets are signed: one at
    /// or past 2^63 (a kernel address in /proc/PID/mem, say) is EINVAL, as the kernel would
    /// say for a negative one, rather than a trap in the conversion.
    static func fileOffset(_ offset: UInt64, _ done: Int, _ call: String, _ doing: String) throws -> off_t {
        let (sum, overflow) = offset.addingReportingOverflow(UInt64(done))
        guard !overflow, let at = off_t(exactly: sum) else {
            throw WBError.system(call: call, errno: EINVAL, what: "\(doing) at offset \(offset) + \(done) (past the largest file offset, 2^63 - 1)")
        }
        return at
    }

    /// Reads from the current position until end of file or `limit` bytes.
    /// Into a buffer that is not zeroed first: most reads are of small /proc files, a
    /// thousand of them while a process waits.
    public func readAll(limit: Int = Int.max) throws -> [UInt8] {
        var out: [UInt8] = []
        try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 65536) { chunk in
            while out.count < limit {
                let n = try syscallValue("read", "reading") { Glibc.read(rawValue, chunk.baseAddress, min(chunk.count, limit - out.count)) }
                if n == 0 { break }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: chunk[0..<n]))
            }
        }
        return out
    }

    /// Writes all of `buffer` at `offset`, with pwrite(2).
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let at = try FileDescriptor.fileOffset(offset, done, "pwrite", "writing")
            let n = try syscallValue("pwrite", "writing at offset \(at)") {
                pwrite(rawValue, buffer.baseAddress! + done, buffer.count - done, at)
            }
            // A write of nothing would loop forever; pwrite makes none but at a file's limit.
            if n == 0 { throw WBError.system(call: "pwrite", errno: EIO, what: "writing at offset \(at): nothing was written") }
            done += n
        }
    }

    /// Writes each buffer at its offset, up to `together` of them in flight at once (with
    /// O_DIRECT each write waits for the disk: scattered writes then overlap their waits).
    public func write(many writes: [(bytes: UnsafeRawBufferPointer, offset: UInt64)], together: Int = 4) throws {
        guard let first = writes.first else { return }
        guard let count = Int32(exactly: writes.count), let inFlight = Int32(exactly: max(1, together)) else {
            throw WBError.system(call: "pwrite", errno: EINVAL, what: "writing \(writes.count) blocks \(together) at a time (too many for one call)")
        }
        var triples: [UInt64] = []
        triples.reserveCapacity(writes.count * 3)
        for w in writes {
            _ = try FileDescriptor.fileOffset(w.offset, w.bytes.count, "pwrite", "writing \(w.bytes.count) bytes")
            triples += [UInt64(UInt(bitPattern: w.bytes.baseAddress)), UInt64(w.bytes.count), w.offset]
        }
        let e = triples.withUnsafeBufferPointer { wb_pwrite_many(rawValue, $0.baseAddress, count, inFlight) }
        if e != 0 {
            throw WBError.system(call: "pwrite", errno: e, what: "writing \(writes.count) blocks from offset \(first.offset)")
        }
    }

    public func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }

    /// write(2) at the current position, all of it.
    public func writeAll(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { buf in
            var done = 0
            while done < buf.count {
                let n = try syscallValue("write", "writing") { Glibc.write(rawValue, buf.baseAddress! + done, buf.count - done) }
                done += n
            }
        }
    }

    public func truncate(to size: UInt64) throws {
        let length = try FileDescriptor.fileOffset(size, 0, "ftruncate", "setting the file size")
        try syscallValue("ftruncate", "setting the file size to \(size)") { ftruncate(rawValue, length) }
    }

    public func sync() throws {
        try syscallValue("fsync", "flushing the file to disk") { fsync(rawValue) }
    }
}

extension FileDescriptor.Status {
    init(_ st: Glibc.stat) {
        // st_size is an off_t: never negative for a file, but a bad driver should not trap us.
        device = UInt64(st.st_dev); inode = UInt64(st.st_ino); size = UInt64(clamping: st.st_size)
        mode = st.st_mode
        mtimeSeconds = Int64(st.st_mtim.tv_sec); mtimeNanoseconds = Int64(st.st_mtim.tv_nsec)
        uid = st.st_uid; gid = st.st_gid
    }
}

extension FileDescriptor {
    /// The ranges of a file that hold data (lseek SEEK_DATA / SEEK_HOLE), as [start, end)
    /// pairs; the rest of its `size` bytes are holes.
    public func dataExtents(size: UInt64) -> [[UInt64]] {
        var out: [[UInt64]] = []
        var at: off_t = 0
        let end = off_t(clamping: size)
        while at < end {
            let data = lseek(rawValue, at, 3 /* SEEK_DATA */)
            if data < 0 { break }
            let hole = lseek(rawValue, data, 4 /* SEEK_HOLE */)
            if hole <= data { out.append([UInt64(data), size]); break }
            out.append([UInt64(data), UInt64(min(hole, end))])
            at = hole
        }
        return out
    }

    /// The seals of a memfd (F_GET_SEALS), nil for a file that takes none.
    /// The open file description's status flags (F_GETFL: access mode, O_NONBLOCK, ...).
    public var statusFlags: Int32? {
        var r: Int32 = 0
        return wb_fcntl_int(rawValue, F_GETFL, 0, &r) == 0 ? r : nil
    }

    public var seals: UInt32? {
        var r: Int32 = 0
        return wb_fcntl_int(rawValue, 1034 /* F_GET_SEALS */, 0, &r) == 0 ? UInt32(bitPattern: r) : nil
    }
}

/// A read-only mapping of a file region, unmapped when released.
public final class MappedRegion: @unchecked Sendable {
    public let base: UnsafeRawPointer
    public let count: Int

    public init(file: FileDescriptor, offset: UInt64, count: Int) throws {
        var p: UnsafeMutableRawPointer?
        if count == 0 {
            base = UnsafeRawPointer(bitPattern: 0x1000)!
            self.count = 0
            return
        }
        try check(wb_map_file(file.rawValue, offset, count, 0, &p), "mmap", "mapping \(count) bytes at offset \(offset)")
        base = UnsafeRawPointer(p!)
        self.count = count
    }

    /// The mapped bytes, valid while `body` runs (the region stays mapped until then).
    public func withBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try withExtendedLifetime(self) { try body(UnsafeRawBufferPointer(start: base, count: count)) }
    }

    /// Tells the kernel the region will be read front to back.
    public func adviseSequential() { _ = wb_madvise(UnsafeMutableRawPointer(mutating: base), count, MADV_SEQUENTIAL) }

    deinit { if count > 0 { _ = wb_unmap(UnsafeMutableRawPointer(mutating: base), count) } }
}
