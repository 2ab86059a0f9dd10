import Foundation

/// Everything an image records about one process. This is the metadata section of an image;
/// docs/image-format.md describes each field.
public struct ProcessState: Codable, Sendable, Equatable {
    public var pid: Int32
    public var ppid: Int32
    public var pgid: Int32
    public var sid: Int32
    public var comm: String
    public var cmdline: [String]
    /// The executable, as /proc/PID/exe named it.
    public var exe: String
    public var exeFile: FileIdentity?
    public var cwd: String
    public var root: String
    public var umask: UInt32
    public var personality: UInt32
    /// CLOCK_MONOTONIC and CLOCK_BOOTTIME as the process saw them when it was stopped
    /// (nanoseconds): restore starts it in a time namespace where they go on from there.
    /// Absent in images of older wb.
    public var clocks: [UInt64]?
    public var credentials: Credentials
    public var rlimits: [ResourceLimit]
    public var mm: MMState
    public var itimers: [IntervalTimer]
    public var posixTimers: [PosixTimer]
    /// All 64 signal dispositions (index 0 is signal 1).
    public var sigactions: [SignalAction]
    /// Signals pending for the whole process.
    public var sharedPending: [PendingSignal]
    public var threads: [ThreadState]
    public var mappings: [Mapping]
    public var fds: [FDState]
    public var pipes: [PipeState]
    /// XSAVE component permissions granted with arch_prctl(ARCH_REQ_XCOMP_PERM) (AMX).
    public var xcompPermissions: UInt64
    /// Started with `wb run --portable`: glibc chose baseline x86-64 code.
    public var portable: Bool
    /// A process of a tree that had exited and was not yet reaped by its parent: its wait
    /// status (as waitpid reports it). A zombie has no threads, memory or files.
    public var zombieStatus: Int32?
    /// The System V shared memory segments the process has attached (each once).
    public var sysvSegments: [SysVSegment]?
    /// The System V semaphore sets and message queues the process was the last to use (in
    /// wb's IPC namespace); absent when there are none, and in images of older wb.
    public var sysvSemaphores: [SysVSemaphoreSet]?
    public var sysvQueues: [SysVMessageQueue]?
    /// The audit login uid (/proc/PID/loginuid; 4294967295 when unset). Absent in images of
    /// older wb.
    public var loginuid: UInt32?
    /// The process's cgroups, one per hierarchy ("memory:/a/b"; cgroup v2's ":/a/b"), from
    /// /proc/PID/cgroup; absent when not known. Restore does not move the process there: a
    /// difference is noted.
    public var cgroups: [String]?
    /// Namespaces of its own that restore does not make again ("mnt", "cgroup"): each is told
    /// at checkpoint and at restore (`ProcessState.namespaceNote`).
    public var ownNamespaces: [String]?
    /// The serial of its session keyring (keyctl KEYCTL_GET_KEYRING_ID), absent when not
    /// known. A restored process has wb's: a difference is noted.
    public var sessionKeyring: Int32?
    /// Process settings of prctl(2) and /proc (absent in older images).
    public var knobs: ProcessKnobs?
    /// Stopped by a signal (SIGSTOP, SIGTSTP: job control) at the checkpoint: restored, it
    /// is let go stopped, for SIGCONT to wake. (Absent: running.)
    public var stopped: Bool?
    /// The working directory had been removed (`cwd` ends in " (deleted)"): restore makes an
    /// empty directory with these attributes, enters it and removes it again. (Absent: the
    /// working directory exists.)
    public var deletedCwd: DeletedDirectory?
    /// In a tree: the process shares its parent's fd table (cloned with CLONE_FILES), or its
    /// working directory, root and umask (CLONE_FS); restore forks it sharing them again.
    /// (Absent: its own.)
    public var sharesParentFiles: Bool?
    public var sharesParentFS: Bool?
    /// The session's controlling terminal, when it is the terminal side of a pseudo-terminal
    /// pair whose master is in the image (its number at the checkpoint), and the terminal's
    /// foreground process group; restore makes it the session's controlling terminal again.
    /// Host and domain name, when the process was in a UTS namespace of its own (not the
    /// checkpointing wb's): restore gives it one with these names. (Absent: wb's.)
    public var uts: UTSNames?
    public var controllingPty: Int32?
    public var foregroundGroup: Int32?

    public init(pid: Int32) {
        self.pid = pid
        ppid = 0; pgid = 0; sid = 0; comm = ""; cmdline = []; exe = ""; exeFile = nil
        cwd = "/"; root = "/"; umask = 0o022; personality = 0
        credentials = Credentials(uid: [0, 0, 0, 0], gid: [0, 0, 0, 0], groups: [])
        rlimits = []; mm = MMState(); itimers = []; posixTimers = []; sigactions = []; sharedPending = []
        threads = []; mappings = []; fds = []; pipes = []; xcompPermissions = 0; portable = false
    }
}

/// uname's host and domain name of a UTS namespace.
public struct UTSNames: Codable, Sendable, Equatable {
    public var hostname: String
    public var domainname: String
    public init(hostname: String, domainname: String) { self.hostname = hostname; self.domainname = domainname }
}

/// A directory that was removed while a process held it (as its working directory, or open
/// as an fd, which keep `mode`, `owner` and `object` in FDState): what it takes to make it
/// again. A removed directory is empty, so there are no contents.
public struct DeletedDirectory: Codable, Sendable, Equatable {
    /// Its permission bits.
    public var mode: UInt32
    /// Owner and group.
    public var owner: [UInt32]
    /// "device:inode" on the checkpoint host: the fds and working directories with the same
    /// object are one directory after restore.
    public var object: String
    public init(mode: UInt32, owner: [UInt32], object: String) {
        self.mode = mode; self.owner = owner; self.object = object
    }
}

/// Settings a process makes about itself that wb restores: the OOM killer's adjustment,
/// the signal it gets when its parent dies, whether it reaps orphans (subreaper), whether
/// transparent huge pages are off for it, its timer slack, whether it is dumpable and whether
/// it may make memory both written and executed (MDWE: systemd's MemoryDenyWriteExecute=).
public struct ProcessKnobs: Codable, Sendable, Equatable {
    public var oomScoreAdj: Int32
    public var parentDeathSignal: Int32
    public var childSubreaper: Bool
    public var thpDisabled: Bool
    public var timerSlackNanoseconds: UInt64
    /// 0, 1 or 2 (PR_GET_DUMPABLE).
    public var dumpable: Int32
    /// Memory-deny-write-execute (PR_GET_MDWE: 1 refuse exec gain, 2 not inherited), absent
    /// when off.
    public var mdwe: UInt32?
    /// /proc/PID/coredump_filter (which mappings a core dump holds), absent when the
    /// kernel's default (0x33).
    public var coredumpFilter: UInt32?
    /// KSM merges all the process's memory, present and future (PR_SET_MEMORY_MERGE);
    /// absent when off.
    public var memoryMerge: Bool?
    /// mlockall's flags for memory mapped from now on: MCL_FUTURE (2), with MCL_ONFAULT (6);
    /// absent when not in force.
    public var lockFuture: UInt32?
    public init(oomScoreAdj: Int32, parentDeathSignal: Int32, childSubreaper: Bool, thpDisabled: Bool,
                timerSlackNanoseconds: UInt64, dumpable: Int32) {
        self.oomScoreAdj = oomScoreAdj; self.parentDeathSignal = parentDeathSignal; self.childSubreaper = childSubreaper
        self.thpDisabled = thpDisabled; self.timerSlackNanoseconds = timerSlackNanoseconds; self.dumpable = dumpable
    }
}

/// A System V shared memory segment (shmget), as shmctl(IPC_STAT) describes it. Its pages
/// are stored with the mappings that attach it.
public struct SysVSegment: Codable, Sendable, Equatable {
    /// The id shmget returned (the process may hold it in a variable).
    public var id: Int32
    /// The key it was created with (for a segment marked for removal, the key its name kept).
    public var key: Int32
    /// Size in bytes, as created.
    public var size: UInt64
    /// Permission bits (the low 9 bits of shm_perm.mode).
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Marked for removal with IPC_RMID: gone once the last process detaches it.
    public var removed: Bool
    /// Locked in memory with SHM_LOCK.
    public var locked: Bool

    public init(id: Int32, key: Int32, size: UInt64, mode: UInt32, uid: UInt32, gid: UInt32, removed: Bool, locked: Bool) {
        self.id = id; self.key = key; self.size = size; self.mode = mode; self.uid = uid; self.gid = gid
        self.removed = removed; self.locked = locked
    }
}

public struct Credentials: Codable, Sendable, Equatable {
    /// Real, effective, saved and filesystem ids, as /proc/PID/status lists them.
    public var uid: [UInt32]
    public var gid: [UInt32]
    public var groups: [UInt32]
    public init(uid: [UInt32], gid: [UInt32], groups: [UInt32]) { self.uid = uid; self.gid = gid; self.groups = groups }
}

public struct ResourceLimit: Codable, Sendable, Equatable {
    public var resource: Int32
    public var name: String
    /// UInt64.max means unlimited.
    public var soft: UInt64
    public var hard: UInt64
    public init(resource: Int32, name: String, soft: UInt64, hard: UInt64) {
        self.resource = resource; self.name = name; self.soft = soft; self.hard = hard
    }
}

/// The mm fields that prctl(PR_SET_MM_MAP) restores, from /proc/PID/stat and /proc/PID/auxv.
public struct MMState: Codable, Sendable, Equatable {
    public var startCode: UInt64 = 0, endCode: UInt64 = 0
    public var startData: UInt64 = 0, endData: UInt64 = 0
    public var startBrk: UInt64 = 0, brk: UInt64 = 0
    public var startStack: UInt64 = 0
    public var argStart: UInt64 = 0, argEnd: UInt64 = 0
    public var envStart: UInt64 = 0, envEnd: UInt64 = 0
    /// The auxiliary vector as (type, value) words, ending with AT_NULL.
    public var auxv: [UInt64] = []
    public init() {}
}

public struct IntervalTimer: Codable, Sendable, Equatable {
    /// ITIMER_REAL (0), ITIMER_VIRTUAL (1) or ITIMER_PROF (2).
    public var which: Int32
    public var intervalMicroseconds: UInt64
    public var valueMicroseconds: UInt64
    public init(which: Int32, intervalMicroseconds: UInt64, valueMicroseconds: UInt64) {
        self.which = which; self.intervalMicroseconds = intervalMicroseconds; self.valueMicroseconds = valueMicroseconds
    }
}

/// One struct kernel_sigaction.
public struct SignalAction: Codable, Sendable, Equatable {
    public var signal: Int32
    /// SIG_DFL (0), SIG_IGN (1) or the handler's address.
    public var handler: UInt64
    public var flags: UInt64
    public var restorer: UInt64
    public var mask: UInt64
    public init(signal: Int32, handler: UInt64, flags: UInt64, restorer: UInt64, mask: UInt64) {
        self.signal = signal; self.handler = handler; self.flags = flags; self.restorer = restorer; self.mask = mask
    }
    public var isDefault: Bool { handler == 0 && flags == 0 && mask == 0 }
}

/// A queued signal with its full 128-byte siginfo.
public struct PendingSignal: Codable, Sendable, Equatable {
    public var signal: Int32
    public var siginfo: Data
    public init(signal: Int32, siginfo: Data) { self.signal = signal; self.siginfo = siginfo }

    /// si_code from the siginfo.
    public var code: Int32 {
        siginfo.count >= 12 ? siginfo.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: Int32.self) } : 0
    }
}

/// Identifies a file so that restore can tell whether the one on this machine is the same.
public struct FileIdentity: Codable, Sendable, Equatable {
    public var size: UInt64
    public var mtimeSeconds: Int64
    public var mtimeNanoseconds: Int64
    public var device: UInt64
    public var inode: UInt64
    /// The content hash when the file is embedded in the image.
    public var content: ContentHash?
    public init(size: UInt64, mtimeSeconds: Int64, mtimeNanoseconds: Int64, device: UInt64, inode: UInt64, content: ContentHash?) {
        self.size = size; self.mtimeSeconds = mtimeSeconds; self.mtimeNanoseconds = mtimeNanoseconds
        self.device = device; self.inode = inode; self.content = content
    }
}

extension ProcessState {
    /// What a namespace of the process's own that restore does not make again means for it.
    public static func namespaceNote(_ ns: String) -> String? {
        switch ns {
        case "mnt": return "the process was in a mount namespace of its own: files are reopened by their paths in the restoring one (its private mounts are not made again)"
        case "cgroup": return "the process was in a cgroup namespace of its own: restored, it sees the restoring one's"
        default: return nil
        }
    }
}
