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
        /// eventfd: counter and semaphore mode in `eventfd`.
        case eventfd
        /// timerfd: clock, timer and unread expirations in `timerfd`.
        case timerfd
        /// signalfd: its signal mask in `signalfd`.
        case signalfd
        /// epoll instance: its interest list in `epoll`.
        case epoll
        /// One end of a Unix socketpair whose other end is in the same process or tree:
        /// `socket` holds its type, the two ends and the bytes queued for this end.
        case unixSocket
        /// A pidfd (pidfd_open) of the process itself or of another process of the tree:
        /// `pidfdTarget` is that process's pid.
        case pidfd
        /// Any other socket: TCP, UDP, a named, listening or unconnected Unix socket, one
        /// connected to a process outside the image (`net` holds it).
        case socket
        /// An inotify instance (`inotify` holds its watches).
        case inotify
        /// A fanotify group (`fanotify` holds its settings and marks).
        case fanotify
        /// The master of a pseudo-terminal pair (/dev/ptmx): `pty` holds the pair's state.
        case ptyMaster
        /// The terminal side (/dev/pts/N) of a pair whose master is in the image: `ptyIndex`
        /// is N, the pair's number at the checkpoint.
        case ptySlave
        /// A POSIX message queue (mq_open): `mqueue` holds its name, attributes and messages.
        case mqueue
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
    /// For deleted files and memfds, the file's identity ("device:inode") on the checkpoint
    /// host: fds and shared mappings with the same identity are one object after restore, and
    /// two objects with the same contents stay two. (Older images lack it: their objects
    /// are told apart by content alone.)
    public var object: String?
    /// For deleted files, the file's mode bits; for placeholders, what the fd really was.
    public var mode: UInt32
    public var note: String?
    public var eventfd: EventFDState?
    public var timerfd: TimerFDState?
    /// The signals a signalfd reads, bit n-1 for signal n.
    public var signalfdMask: UInt64?
    /// The interest list of an epoll instance.
    public var epoll: [EpollWatch]?
    /// Open file descriptions shared between processes of a tree (or fds of one process)
    /// have the same number here: restore gives them one description again.
    public var description: Int?
    public var socket: SocketState?
    /// A FIFO whose name was unlinked while it was open: restore makes one, opens it and
    /// unlinks it again. (Absent: not deleted.)
    public var deleted: Bool?
    /// The locks this fd holds (POSIX record locks of the process on this file, OFD and
    /// flock locks of this open file description, a lease), from /proc/PID/fdinfo.
    public var locks: [FileLock]?
    /// For deleted files and memfds: owner and group, modification time (seconds,
    /// nanoseconds), memfd seals (F_GET_SEALS), and the ranges holding data as [start, end)
    /// pairs when the file has holes (absent: all data).
    public var owner: [UInt32]?
    public var mtime: [Int64]?
    public var seals: UInt32?
    public var extents: [[UInt64]]?
    /// For a pidfd: the pid it refers to.
    public var pidfdTarget: Int32?
    /// For a socket of kind `socket`: its family, addresses, options and queues.
    public var net: NetSocketState?
    /// For an inotify instance: its watches, by watch descriptor.
    public var inotify: [InotifyWatch]?
    /// For a fanotify group: its settings and marks.
    public var fanotify: FanotifyState?
    /// For a pseudo-terminal master: the pair's number, lock, packet mode and settings.
    public var pty: PtyState?
    /// For the terminal side of a pair: the pair's number at the checkpoint.
    public var ptyIndex: Int32?
    /// For a file reopened by path: the statfs magic number of its filesystem, so that a path
    /// that names something else now (a file where a message queue or a /proc file was) is
    /// refused at restore. (Older images lack it.)
    public var filesystem: UInt64?
    /// For a POSIX message queue: its name, attributes and messages.
    public var mqueue: MessageQueueState?
    /// Who gets a signal when I/O is possible on the fd (F_SETOWN_EX, for O_ASYNC and a
    /// socket's urgent data) and which (F_SETSIG); absent when nobody and the default.
    public var signalOwner: SignalOwner?

    public init(fd: Int32, kind: Kind, flags: Int32, closeOnExec: Bool, path: String, offset: UInt64) {
        self.fd = fd; self.kind = kind; self.flags = flags; self.closeOnExec = closeOnExec
        self.path = path; self.offset = offset; pipe = nil; content = nil; mode = 0; note = nil
    }

    /// O_RDONLY, O_WRONLY or O_RDWR.
    public var accessMode: Int32 { flags & 3 }
}

/// F_GETOWN_EX and F_GETSIG of an fd: the owner's kind (0 a thread, 1 a process, 2 a
/// process group), its id (0: none) and the signal sent (0: SIGIO).
public struct SignalOwner: Codable, Sendable, Equatable {
    public var type: Int32
    public var pid: Int32
    public var signal: Int32
    public init(type: Int32, pid: Int32, signal: Int32) { self.type = type; self.pid = pid; self.signal = signal }
}

/// A POSIX message queue as mq_getattr and its messages show it. Its messages are read by
/// receiving them all and sending them back in the same order (the queue has no way to look
/// without taking), while every process of the checkpoint is stopped.
public struct MessageQueueState: Codable, Sendable, Equatable {
    /// The queue's name without the leading "/" (mq_open's name is "/" + this).
    public var name: String
    /// The queue's identity ("device:inode") at the checkpoint: fds with the same one are
    /// one queue after restore.
    public var object: String
    public var maxMessages: Int64
    public var messageSize: Int64
    /// Permission bits, owner and group.
    public var mode: UInt32
    public var owner: [UInt32]
    /// The messages, in the order they would be received (highest priority first).
    public var messages: [MessageQueueMessage]
    /// The name was removed (mq_unlink) while the queue was open.
    public var deleted: Bool?
    public init(name: String, object: String, maxMessages: Int64, messageSize: Int64, mode: UInt32, owner: [UInt32],
                messages: [MessageQueueMessage], deleted: Bool?) {
        self.name = name; self.object = object; self.maxMessages = maxMessages; self.messageSize = messageSize
        self.mode = mode; self.owner = owner; self.messages = messages; self.deleted = deleted
    }
}

/// One message of a POSIX message queue.
public struct MessageQueueMessage: Codable, Sendable, Equatable {
    public var priority: UInt32
    public var bytes: Data
    public init(priority: UInt32, bytes: Data) { self.priority = priority; self.bytes = bytes }
}

/// A fanotify group: fanotify_init's flags and event_f_flags, and its marks.
public struct FanotifyState: Codable, Sendable, Equatable {
    public var flags: UInt32
    public var eventFlags: UInt32
    public var marks: [FanotifyMark]
    public init(flags: UInt32, eventFlags: UInt32, marks: [FanotifyMark]) {
        self.flags = flags; self.eventFlags = eventFlags; self.marks = marks
    }
}

/// One mark of a fanotify group: on a file or directory (`inode`), a mount (`mount`, by its
/// mount point) or a filesystem (`filesystem`, by a path on it), with its flags as fdinfo
/// shows them (FAN_MARK_IGNORED_SURV_MODIFY 0x40, FAN_MARK_EVICTABLE 0x200,
/// FAN_MARK_IGNORE 0x400), its event mask and its ignore mask.
public struct FanotifyMark: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case inode, mount, filesystem }
    public var kind: Kind
    public var path: String
    public var flags: UInt32
    public var mask: UInt64
    public var ignoredMask: UInt64
    public init(kind: Kind, path: String, flags: UInt32, mask: UInt64, ignoredMask: UInt64) {
        self.kind = kind; self.path = path; self.flags = flags; self.mask = mask; self.ignoredMask = ignoredMask
    }
}

/// A pseudo-terminal pair, as its master shows it.
public struct PtyState: Codable, Sendable, Equatable {
    /// /dev/pts/INDEX at the checkpoint.
    public var index: Int32
    /// The terminal side could not be opened yet (TIOCSPTLCK).
    public var locked: Bool
    /// Packet mode (TIOCPKT).
    public var packet: Bool
    /// The terminal side's struct termios as the kernel keeps it (36 bytes: TCGETS).
    public var termios: Data
    /// Window size: rows, columns, x and y pixels.
    public var winsize: [UInt16]
    public init(index: Int32, locked: Bool, packet: Bool, termios: Data, winsize: [UInt16]) {
        self.index = index; self.locked = locked; self.packet = packet; self.termios = termios; self.winsize = winsize
    }
}

/// A lock as /proc/PID/fdinfo lists it ("lock: 1: POSIX  ADVISORY  WRITE 1234 fe:00:56 0 EOF").
public struct FileLock: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case posix, ofd, flock, lease }
    public var kind: Kind
    /// A write (exclusive) lock, else a read (shared) one.
    public var write: Bool
    /// The first byte and the last one (nil: to the end of the file, however long it grows).
    public var start: UInt64
    public var end: UInt64?
    public init(kind: Kind, write: Bool, start: UInt64, end: UInt64?) {
        self.kind = kind; self.write = write; self.start = start; self.end = end
    }

    /// Parses one "lock:" line of fdinfo; nil for what is not a lock wb restores.
    public static func parse(_ line: String) -> (FileLock?, String) {
        let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        // "lock:" "1:" KIND MODE TYPE PID DEV:INO START END
        guard f.count >= 9 else { return (nil, line) }
        let kinds: [String: Kind] = ["POSIX": .posix, "OFDLCK": .ofd, "FLOCK": .flock, "LEASE": .lease]
        guard let kind = kinds[f[2]] else { return (nil, "a \(f[2]) lock") }
        guard f[3] == "ADVISORY" || kind == .lease else { return (nil, "a mandatory lock") }
        let type = kind == .lease ? f[4] : f[4]
        guard let start = UInt64(f[7]) else { return (nil, line) }
        let end = f[8] == "EOF" ? nil : UInt64(f[8])
        return (FileLock(kind: kind, write: type.hasPrefix("WRITE"), start: start, end: end), "")
    }
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

/// One end of a connected pair of Unix sockets.
public struct SocketState: Codable, Sendable, Equatable {
    /// SOCK_STREAM (1), SOCK_DGRAM (2) or SOCK_SEQPACKET (5).
    public var type: Int32
    /// The socket's inode and its peer's.
    public var inode: UInt64
    public var peer: UInt64
    /// Bytes sent by the peer and not yet read from this end.
    public var queued: Data
    /// For a datagram or seqpacket pair: the messages queued on this end, oldest first
    /// (`queued` is then empty; their boundaries are kept).
    public var messages: [Data]?
    public init(type: Int32, inode: UInt64, peer: UInt64, queued: Data) {
        self.type = type; self.inode = inode; self.peer = peer; self.queued = queued
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
    /// When set, the bytes are not in the image but in this file (relative to the image's
    /// directory: a timeline's store), whole, from its start.
    public var source: String?
    public init(hash: ContentHash, size: UInt64, dataOffset: UInt64, paths: [String], code: Bool, source: String? = nil) {
        self.hash = hash; self.size = size; self.dataOffset = dataOffset; self.paths = paths; self.code = code; self.source = source
    }
}

public struct EventFDState: Codable, Sendable, Equatable {
    public var count: UInt64
    public var semaphore: Bool
    public init(count: UInt64, semaphore: Bool) { self.count = count; self.semaphore = semaphore }
}

public struct TimerFDState: Codable, Sendable, Equatable {
    public var clock: Int32
    /// Expirations not yet read.
    public var ticks: UInt64
    /// Time to the next expiration (0: disarmed) and the period, in nanoseconds.
    public var valueNanoseconds: UInt64
    public var intervalNanoseconds: UInt64
    /// timerfd_settime's flags (TFD_TIMER_ABSTIME 1, TFD_TIMER_CANCEL_ON_SET 2), absent when 0.
    public var settimeFlags: Int32?
    /// For an absolute timer of a wall clock (CLOCK_REALTIME, CLOCK_REALTIME_ALARM): the
    /// wall-clock time of its next expiration, in nanoseconds since the epoch; restore arms it
    /// for that moment, as the program did.
    public var absoluteNanoseconds: UInt64?
    public init(clock: Int32, ticks: UInt64, valueNanoseconds: UInt64, intervalNanoseconds: UInt64) {
        self.clock = clock; self.ticks = ticks; self.valueNanoseconds = valueNanoseconds; self.intervalNanoseconds = intervalNanoseconds
    }
}

/// One entry of an epoll interest list: the watched fd number, the event mask (EPOLLIN,
/// EPOLLET, ...) and the user data.
public struct EpollWatch: Codable, Sendable, Equatable {
    public var fd: Int32
    public var events: UInt32
    public var data: UInt64
    /// When `fd` was closed (or reused) after the watch was added: another fd of the process
    /// holding the watched file. Restore adds the watch through a copy of it numbered `fd`.
    public var twin: Int32?
    public init(fd: Int32, events: UInt32, data: UInt64) { self.fd = fd; self.events = events; self.data = data }
}

/// A POSIX timer (timer_create), from /proc/PID/timers and timer_gettime.
public struct PosixTimer: Codable, Sendable, Equatable {
    public enum Notify: String, Codable, Sendable { case signal, thread, none }
    public var id: Int32
    public var clock: Int32
    public var notify: Notify
    public var signal: Int32
    /// sigev_value.
    public var value: UInt64
    /// The thread a SIGEV_THREAD_ID timer signals.
    public var thread: Int32?
    public var valueNanoseconds: UInt64
    public var intervalNanoseconds: UInt64
    public init(id: Int32, clock: Int32, notify: Notify, signal: Int32, value: UInt64, thread: Int32?,
                valueNanoseconds: UInt64, intervalNanoseconds: UInt64) {
        self.id = id; self.clock = clock; self.notify = notify; self.signal = signal; self.value = value
        self.thread = thread; self.valueNanoseconds = valueNanoseconds; self.intervalNanoseconds = intervalNanoseconds
    }
}

/// One watch of an inotify instance: the descriptor the process knows it by, the events it
/// asks for (with IN_ONESHOT, IN_EXCL_UNLINK and the like), and the watched file's path.
public struct InotifyWatch: Codable, Sendable, Equatable {
    public var wd: Int32
    public var mask: UInt32
    public var path: String
    public init(wd: Int32, mask: UInt32, path: String) { self.wd = wd; self.mask = mask; self.path = path }
}
