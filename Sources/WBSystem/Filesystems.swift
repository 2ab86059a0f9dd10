import CWBNative

/// The filesystem a file lives on, by its statfs(2) magic number. A path only names the same
/// object again on the same kind of filesystem: "/q" of a POSIX message queue (mqueue) is not
/// "/q" on the root filesystem, and a file of /proc or /sys is the kernel's view of something,
/// not stored data. Restore uses this to tell a file it may reopen by path from one it may not.
public enum Filesystems {
    /// Magic numbers of filesystems whose files are the kernel's objects or views rather than
    /// stored data, with the names mount(8) gives them.
    public static let pseudo: [UInt64: String] = [
        0x1980_0202: "mqueue", 0x9fa0: "proc", 0x6265_6572: "sysfs", 0x6367_7270: "cgroup2",
        0x0027_e0eb: "cgroup", 0x6462_6720: "debugfs", 0x7472_6163: "tracefs", 0x7363_6673: "securityfs",
        0x6265_6570: "configfs", 0xcafe_4a11: "bpf", 0x6e73_6673: "nsfs", 0x5049_4446: "pidfs",
        0x6573_5543: "fusectl", 0x4249_4e4d: "binfmt_misc", 0x6e66_7364: "nfsd", 0x1cd1: "devpts",
        0x6165_676c: "pstore", 0xde5e_81e4: "efivarfs", 0x6c6f_6f70: "binderfs", 0xf97c_ff8c: "selinuxfs",
        0x534f_434b: "sockfs", 0x5345_434d: "secretmem", 0x0904_1934: "anon_inode",
    ]

    /// POSIX message queues (mq_open): their files are queues, read and written by mq_*.
    public static let mqueue: UInt64 = 0x1980_0202

    /// The statfs magic number of the filesystem holding `path` (a /proc/PID/fd/N link is
    /// followed to the open file), or nil when it cannot be read.
    public static func magic(_ path: String) -> UInt64? {
        var magic: UInt64 = 0
        return wb_filesystem_magic(path, &magic) == 0 ? magic : nil
    }

    /// A name for filesystem `magic`: mount(8)'s for the pseudo filesystems, "a disk or memory
    /// filesystem" for the rest.
    public static func name(_ magic: UInt64) -> String {
        pseudo[magic] ?? "a disk or memory filesystem"
    }

    /// Whether a file reopened on filesystem `now` is on the kind of filesystem the image
    /// recorded (`then`): the same one where either is a pseudo filesystem; any disk or
    /// memory filesystem for stored files (a file copied to another machine may sit on
    /// another kind of disk).
    public static func sameKind(_ then: UInt64, _ now: UInt64) -> Bool {
        if pseudo[then] != nil || pseudo[now] != nil { return then == now }
        return true
    }
}

