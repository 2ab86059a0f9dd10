import Foundation

/// One open file descriptor.
public struct FDState: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// A regular file or directory reopened by path at the recorded offset.
        case file
        /// A file that was unlinked while open: its content is embedded and recreated.
        case deletedFile
        /// One end of a pipe (`pipe` names it in `ProcessState.pipes`).
        case pipe
        /// A named pipe, reopened by path.
        case fifo
        /// A character device reopened by path (/dev/null, /dev/zero, /dev/urandom, ...).
        case device
        /// A terminal: restore attaches the restoring terminal instead.
        case tty
        /// An fd wb could not restore, kept as /dev/null because the user allowed it.
        case placeholder
    }

    public var fd: Int32
    public var kind: Kind
    /// Open flags as /proc/PID/fdinfo shows them (O_ACCMODE, O_APPEND, O_NONBLOCK, ...).
    public var flags: Int32
    public var closeOnExec: Bool
    public var path: String
    public var offset: UInt64
    /// Pipe inode for pipes and FIFOs.
    public var pipe: UInt64?
    /// Embedded content of a deleted file.
    public var content: ContentHash?
    /// For deleted files, the file's mode bits; for placeholders, what the fd really was.
    public var mode: UInt32
    public var note: String?

    public init(fd: Int32, kind: Kind, flags: Int32, closeOnExec: Bool, path: String, offset: UInt64) {
        self.fd = fd; self.kind = kind; self.flags = flags; self.closeOnExec = closeOnExec
        self.path = path; self.offset = offset; pipe = nil; content = nil; mode = 0; note = nil
    }

    /// O_RDONLY, O_WRONLY or O_RDWR.
    public var accessMode: Int32 { flags & 3 }
}

/// A pipe (or FIFO) buffer and who holds its ends.
public struct PipeState: Codable, Sendable, Equatable {
    public var id: UInt64
    /// Bytes that were written and not yet read, in order.
    public var buffered: Data
    /// F_GETPIPE_SZ.
    public var capacity: Int32
    /// True when an end of the pipe lives outside the process (a shell pipeline, a parent).
    public var external: Bool
    public init(id: UInt64, buffered: Data, capacity: Int32, external: Bool) {
        self.id = id; self.buffered = buffered; self.capacity = capacity; self.external = external
    }
}

/// A file embedded in the image (executables, libraries, deleted files), stored once.
public struct EmbeddedFile: Codable, Sendable, Equatable {
    public var hash: ContentHash
    public var size: UInt64
    /// Offset of its bytes within the image's file section (4096-aligned).
    public var dataOffset: UInt64
    /// The paths it was known by in the process.
    public var paths: [String]
    /// Executable mappings of this file existed (an executable or a library).
    public var code: Bool
    public init(hash: ContentHash, size: UInt64, dataOffset: UInt64, paths: [String], code: Bool) {
        self.hash = hash; self.size = size; self.dataOffset = dataOffset; self.paths = paths; self.code = code
    }
}
