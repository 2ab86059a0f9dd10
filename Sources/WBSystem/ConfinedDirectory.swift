import CWBNative
import Glibc

/// O_PATH, which Swift's Glibc does not show.
private let oPath = Int32(WB_O_PATH)
/// Every lookup inside: no step out, no symlink followed (nor /proc's magic links).
private let beneath = UInt64(WB_RESOLVE_BENEATH | WB_RESOLVE_NO_SYMLINKS | WB_RESOLVE_NO_MAGICLINKS)
/// Lookups for reading (`openForReading`): links are followed while they stay inside.
private let beneathFollowing = UInt64(WB_RESOLVE_BENEATH | WB_RESOLVE_NO_MAGICLINKS)

/// A directory wb writes into under names it did not choose (paths read from an image) or
/// that someone else could have prepared (a cache in /tmp): nothing it creates, replaces or
/// renames ever lands outside, whatever the names say and whatever links were planted inside.
///
/// The directory is opened once and every operation starts from that descriptor. A name is
/// split into components (a `..` or a NUL byte refuses it: wb does not guess what an image
/// meant), the parent of its last component is opened with openat2(RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS), so the kernel refuses any symlink on the way with no window between
/// a check and its use, and the last component is changed with the `*at` call on that
/// parent's descriptor (mkdirat, symlinkat, unlinkat, renameat), none of which follows a link
/// there. Kernels without openat2 (before 5.6, or behind a seccomp filter that hides it) get
/// the same refusals from a walk that opens one component at a time with O_NOFOLLOW.
public final class ConfinedDirectory: @unchecked Sendable {
    /// Its path, for messages and for programs that only read it (gdb's sysroot).
    public let path: String
    private let fd: FileDescriptor
    let resolution: Resolution

    /// How names inside are opened.
    enum Resolution: Sendable {
        /// One openat2 call per name.
        case openat2
        /// One openat(O_NOFOLLOW) per component, refusing any that is a symlink.
        case walk

        /// openat2 where this kernel (and any seccomp filter around wb) has it.
        static let kernel: Resolution = {
            var probe: Int32 = -1
            let e = wb_openat2(AT_FDCWD, "/", UInt64(oPath | O_CLOEXEC), 0, UInt64(WB_RESOLVE_NO_SYMLINKS), &probe)
            if e == 0 { _ = Glibc.close(probe); return .openat2 }
            return e == ENOSYS || e == EPERM ? .walk : .openat2
        }()
    }

    /// What lies at a name inside, as lstat(2) sees it (a link is a link, not its target).
    public struct Entry: Sendable, Equatable {
        public enum Kind: Sendable, Equatable { case regular, directory, symbolicLink, other }
        public var kind: Kind
        public var size: UInt64
        /// The owner's uid.
        public var owner: UInt32
        /// The permission bits (st_mode & 0o7777).
        public var permissions: UInt32

        init(_ st: stat) {
            switch st.st_mode & S_IFMT {
            case S_IFREG: kind = .regular
            case S_IFDIR: kind = .directory
            case S_IFLNK: kind = .symbolicLink
            default: kind = .other
            }
            size = UInt64(st.st_size)
            owner = st.st_uid
            permissions = st.st_mode & 0o7777
        }
    }

    /// Opens the directory at `path`, creating it with `mode` (and missing parents with 0700)
    /// when it does not exist. Refused when its last component is a symbolic link or not a
    /// directory, or when it belongs to another user than the effective uid: a directory
    /// someone else made could hold anything, and they could change it under us. The parents
    /// are the caller's (a home directory, /tmp) and are followed as usual.
    public convenience init(opening path: String, mode: mode_t = 0o700) throws {
        try self.init(opening: path, mode: mode, resolution: .kernel)
    }

    init(opening path: String, mode: mode_t, resolution: Resolution) throws {
        var trimmed = Substring(path)
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        let name = trimmed.split(separator: "/").last.map(String.init) ?? ""
        guard !name.isEmpty, name != ".", name != "..", !path.utf8.contains(0) else {
            throw WBError.invalidArgument("\(ConfinedDirectory.quoted(path)) does not name a directory wb can keep its files in")
        }
        let parent = Paths.directory(of: String(trimmed))
        try Paths.makeDirectories(parent, mode: 0o700)
        let parentFD = try FileDescriptor.open(parent, oPath | O_DIRECTORY, what: "opening \(parent)")
        if mkdirat(parentFD.rawValue, name, mode) != 0 && errno != EEXIST {
            throw WBError.system(call: "mkdirat(\(path))", errno: errno, what: "creating \(path)")
        }
        let raw = openat(parentFD.rawValue, name, oPath | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard raw >= 0 else {
            let e = errno
            // O_NOFOLLOW | O_DIRECTORY fails a symlink with ENOTDIR: say which it was.
            var st = stat()
            if (e == ENOTDIR || e == ELOOP) && fstatat(parentFD.rawValue, name, &st, AT_SYMLINK_NOFOLLOW) == 0 {
                throw ConfinedDirectory.refusal(path, st)
            }
            throw WBError.system(call: "open(\(path))", errno: e, what: "opening \(path)")
        }
        let opened = FileDescriptor(owning: raw)
        var st = stat()
        try syscallValue("fstat(\(path))", "checking \(path)") { fstat(raw, &st) }
        guard st.st_mode & S_IFMT == S_IFDIR, st.st_uid == geteuid() else { throw ConfinedDirectory.refusal(path, st) }
        self.path = path
        fd = opened
        self.resolution = resolution
    }

    private init(path: String, fd: FileDescriptor, resolution: Resolution) {
        self.path = path; self.fd = fd; self.resolution = resolution
    }

    /// Why a directory at `path` with status `st` is not one wb keeps files in.
    private static func refusal(_ path: String, _ st: stat) -> WBError {
        switch st.st_mode & S_IFMT {
        case S_IFLNK: return .refused("refusing \(path): it is a symbolic link, not a directory of its own")
        case S_IFDIR: return .refused("refusing \(path): it belongs to uid \(st.st_uid), not to uid \(geteuid()) that runs wb")
        default: return .refused("refusing \(path): it is not a directory")
        }
    }

    // MARK: - Names

    /// The components of `path` as a name inside a directory: split on "/", empty and "."
    /// components dropped, so an absolute path counts from the directory. A `..` component or a
    /// NUL byte refuses the path: it came from somewhere wb does not trust, and confining it
    /// silently would put it somewhere it never was.
    public static func components(of path: String) throws -> [String] {
        if path.utf8.contains(0) { throw WBError.refused("refusing path \(quoted(path)): it has a NUL byte") }
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        if parts.contains("..") { throw WBError.refused("refusing path \(quoted(path)): it has a '..' component") }
        return parts.map(String.init)
    }

    /// The path of `relative` inside this directory, as other programs should open it.
    public func path(of relative: String) throws -> String { shown(try ConfinedDirectory.components(of: relative)) }

    private func shown<C: Collection<String>>(_ components: C) -> String {
        components.isEmpty ? path : path + "/" + components.joined(separator: "/")
    }

    /// A path as one line: quoted, with newlines and control bytes escaped.
    static func quoted(_ s: String) -> String { String(reflecting: s) }

    // MARK: - Operations

    /// Creates `relative` and any missing directories on the way (mkdirat, each component
    /// relative to its parent's descriptor). A symbolic link or a non-directory on the way is
    /// refused, never followed.
    public func makeDirectories(_ relative: String, mode: mode_t = 0o755) throws {
        _ = try makeDirectories(try ConfinedDirectory.components(of: relative), mode: mode)
    }

    /// The directory `relative` inside this one, created with `mode` when missing, as a
    /// confined directory of its own. Refused like `init(opening:)` when someone else owns it.
    public func subdirectory(_ relative: String, mode: mode_t = 0o700) throws -> ConfinedDirectory {
        let components = try ConfinedDirectory.components(of: relative)
        guard let opened = try makeDirectories(components, mode: mode) else { return self }
        var st = stat()
        try syscallValue("fstat(\(shown(components)))", "checking \(shown(components))") { fstat(opened.rawValue, &st) }
        guard st.st_uid == geteuid() else { throw ConfinedDirectory.refusal(shown(components), st) }
        return ConfinedDirectory(path: shown(components), fd: opened, resolution: resolution)
    }

    /// Makes `relative` a symbolic link to `target` (symlinkat on its parent's descriptor).
    /// A link or file already there is replaced: the entry itself is removed with unlinkat,
    /// so what it pointed to is never touched. A directory there is refused. The parent must
    /// exist (`makeDirectories`).
    public func symlink(target: String, at relative: String) throws {
        if target.utf8.contains(0) { throw WBError.refused("refusing link target \(ConfinedDirectory.quoted(target)): it has a NUL byte") }
        let components = try ConfinedDirectory.components(of: relative)
        let where_ = shown(components)
        try withParent(components) { parent, name in
            // Another process may be building the same directory: a name that comes back
            // between unlink and symlink is replaced again, a few times.
            for _ in 0..<4 {
                if symlinkat(target, parent, name) == 0 { return }
                guard errno == EEXIST else {
                    throw WBError.system(call: "symlinkat(\(where_))", errno: errno, what: "linking \(where_) to \(target)")
                }
                if unlinkat(parent, name, 0) != 0 && errno != ENOENT {
                    if errno == EISDIR || errno == EPERM {
                        throw WBError.refused("refusing to replace \(where_) with a link to \(target): it is a directory")
                    }
                    throw WBError.system(call: "unlinkat(\(where_))", errno: errno, what: "replacing \(where_) with a link")
                }
            }
            throw WBError.failed("linking \(where_) to \(target): something else kept creating \(where_) meanwhile")
        }
    }

    /// Creates the regular file `relative`, which must not exist (O_CREAT | O_EXCL |
    /// O_NOFOLLOW, opened beneath this directory), for writing. An existing name fails with
    /// EEXIST (`WBError.system`), whatever it is.
    public func createFile(_ relative: String, mode: mode_t = 0o644) throws -> FileDescriptor {
        let components = try ConfinedDirectory.components(of: relative)
        return try withParent(components) { parent, name in
            try open([name], from: parent, flags: O_WRONLY | O_CREAT | O_EXCL, mode: mode,
                     shown: components, what: "creating \(shown(components))")
        }
    }

    /// Renames `from` to `to`, both inside (renameat on their parents' descriptors): a link or
    /// file at `to` is replaced as an entry, never followed.
    public func rename(_ from: String, to: String) throws {
        let a = try ConfinedDirectory.components(of: from), b = try ConfinedDirectory.components(of: to)
        try withParent(a) { pa, na in
            try withParent(b) { pb, nb in
                _ = try syscallValue("renameat(\(shown(a)), \(shown(b)))", "moving \(shown(a)) to \(shown(b))") {
                    renameat(pa, na, pb, nb)
                }
            }
        }
    }

    /// What is at `relative`, not following a link there; nil when nothing is.
    public func status(of relative: String) throws -> Entry? {
        let components = try ConfinedDirectory.components(of: relative)
        var st = stat()
        guard !components.isEmpty else {
            try syscallValue("fstat(\(path))", "checking \(path)") { fstat(fd.rawValue, &st) }
            return Entry(st)
        }
        do {
            return try withParent(components) { parent, name in
                if fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0 { return Entry(st) }
                if errno == ENOENT { return nil }
                throw WBError.system(call: "fstatat(\(shown(components)))", errno: errno, what: "checking \(shown(components))")
            }
        } catch WBError.system(_, ENOENT, _) {
            return nil
        }
    }

    /// Removes the file or link `relative` (unlinkat: a link goes, not its target); nothing
    /// there is fine.
    public func remove(_ relative: String) throws {
        let components = try ConfinedDirectory.components(of: relative)
        try withParent(components) { parent, name in
            if unlinkat(parent, name, 0) != 0 && errno != ENOENT {
                throw WBError.system(call: "unlinkat(\(shown(components)))", errno: errno, what: "removing \(shown(components))")
            }
        }
    }

    // MARK: - Reading beneath a directory of someone else's

    /// Opens the file `relative` for reading beneath `directory`, for names wb does not trust
    /// in a directory it neither made nor owns (a timeline's store beside an image that came
    /// from elsewhere). openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) from the directory's
    /// descriptor: symbolic links inside are followed, one (or a `..` in one) that leads out
    /// is refused by the kernel, with no window between a check and the open. Only a regular
    /// file is opened, and it is looked at first through an O_PATH descriptor, so that a FIFO
    /// or a device node planted there is never opened (a FIFO would block, some devices act on
    /// open). `relative` is split like every name here (`..` or a NUL refuses it). `directory`
    /// itself is the caller's and is followed as usual. Kernels without openat2 get the walk,
    /// which refuses every link on the way.
    public static func openForReading(beneath directory: String, path relative: String) throws -> FileDescriptor {
        try openForReading(beneath: directory, path: relative, resolution: .kernel)
    }

    static func openForReading(beneath directory: String, path relative: String,
                               resolution: Resolution) throws -> FileDescriptor {
        let components = try ConfinedDirectory.components(of: relative)
        guard !components.isEmpty else {
            throw WBError.invalidArgument("\(quoted(relative)) names the directory \(directory) itself, not a file in it")
        }
        let opened = try FileDescriptor.open(directory, oPath | O_DIRECTORY, what: "opening \(directory)")
        let dir = ConfinedDirectory(path: directory, fd: opened, resolution: resolution)
        let name = dir.shown(components)
        let found = try dir.open(components, from: dir.fd.rawValue, flags: oPath, mode: 0, shown: components,
                                 what: "opening \(name)", followingLinks: true)
        var st = stat()
        try syscallValue("fstat(\(name))", "checking \(name)") { fstat(found.rawValue, &st) }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw WBError.refused("refusing \(name): it is \(Entry(st).kind == .directory ? "a directory" : "not a regular file")")
        }
        // The O_PATH descriptor pins the file: opening it again through /proc/self/fd reaches
        // that file, whatever the names inside are changed to meanwhile.
        let raw = try withExtendedLifetime(found) {
            try syscallValue("open(\(name))", "opening \(name)") {
                Glibc.open("/proc/self/fd/\(found.rawValue)", O_RDONLY | O_NOCTTY | O_CLOEXEC)
            }
        }
        return FileDescriptor(owning: raw)
    }

    // MARK: - Resolution

    /// Runs `body` with the descriptor of the directory holding the last of `components`
    /// (opened beneath this one, no symlink on the way) and that last name.
    private func withParent<T>(_ components: [String], _ body: (Int32, String) throws -> T) throws -> T {
        guard let name = components.last else {
            throw WBError.invalidArgument("a name inside \(path) is empty: it would be \(path) itself")
        }
        let dirs = Array(components.dropLast())
        if dirs.isEmpty { return try withExtendedLifetime(fd) { try body(fd.rawValue, name) } }
        let parent = try open(dirs, from: fd.rawValue, flags: oPath | O_DIRECTORY, mode: 0,
                              shown: dirs, what: "opening \(shown(dirs))")
        return try withExtendedLifetime(parent) { try body(parent.rawValue, name) }
    }

    /// Creates each of `components` that is missing and opens it in turn; returns the last
    /// one's descriptor (nil for none: this directory).
    private func makeDirectories(_ components: [String], mode: mode_t) throws -> FileDescriptor? {
        var current: FileDescriptor?
        for (i, name) in components.enumerated() {
            let here = Array(components[...i])
            let base = current?.rawValue ?? fd.rawValue
            let made = withExtendedLifetime(current) { mkdirat(base, name, mode) == 0 ? 0 : errno }
            if made != 0 && made != EEXIST {
                throw WBError.system(call: "mkdirat(\(shown(here)))", errno: made, what: "creating \(shown(components))")
            }
            current = try withExtendedLifetime(current) {
                try open([name], from: base, flags: oPath | O_DIRECTORY, mode: 0, shown: here,
                         what: "creating \(shown(components))")
            }
        }
        return current
    }

    /// Opens `components` below the directory `base` with `flags`, refusing any symlink on
    /// the way (and at the end: O_NOFOLLOW, or RESOLVE_NO_SYMLINKS for O_PATH) and any step
    /// outside. `here` names the same path from this directory, for errors. `followingLinks`
    /// (for readers, with openat2 only) follows links that stay inside instead.
    private func open(_ components: [String], from base: Int32, flags: Int32, mode: mode_t,
                      shown here: [String], what: String, followingLinks: Bool = false) throws -> FileDescriptor {
        // With O_PATH, O_NOFOLLOW would open a final symlink itself instead of refusing it.
        let finalFlags = flags | O_CLOEXEC | (flags & oPath != 0 || followingLinks ? 0 : O_NOFOLLOW)
        switch resolution {
        case .openat2:
            var out: Int32 = -1
            var e: Int32 = EAGAIN
            // EAGAIN: a rename elsewhere raced a `..` on the way, and the kernel asks again.
            for _ in 0..<8 where e == EAGAIN {
                e = wb_openat2(base, components.joined(separator: "/"), UInt64(finalFlags), UInt64(mode),
                               followingLinks ? beneathFollowing : beneath, &out)
            }
            if e != 0 {
                throw openFailure(e, in: base, name: components.count == 1 ? components[0] : nil, shown: here,
                                  call: "openat2", what: what, followingLinks: followingLinks)
            }
            return FileDescriptor(owning: out)
        case .walk:
            var current: FileDescriptor?
            for (i, name) in components.enumerated() {
                // `here` ends with `components`: the part up to this one.
                let step = Array(here.dropLast(components.count - i - 1))
                let f = i == components.count - 1 ? finalFlags | O_NOFOLLOW : oPath | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
                let from = current?.rawValue ?? base
                try withExtendedLifetime(current) {
                    let raw = openat(from, name, f, mode)
                    if raw < 0 { throw openFailure(errno, in: from, name: name, shown: step, call: "openat", what: what) }
                    let opened = FileDescriptor(owning: raw)
                    var st = stat()
                    if f & oPath != 0 && fstat(raw, &st) == 0 && st.st_mode & S_IFMT == S_IFLNK {
                        throw openFailure(ELOOP, in: from, name: name, shown: step, call: "openat", what: what)
                    }
                    current = opened
                }
            }
            return current!
        }
    }

    /// The error for an open in directory `dir` that failed with `e`: a link or a
    /// non-directory in the way is a refusal naming it; anything else is the call's errno.
    /// `name` is the single component opened, when it was one.
    private func openFailure(_ e: Int32, in dir: Int32, name: String?, shown here: [String], call: String,
                             what: String, followingLinks: Bool = false) -> WBError {
        switch e {
        case ELOOP where followingLinks:
            return .refused("refusing \(shown(here)): its links go round in a loop, or through one of /proc's magic links")
        case ELOOP:
            return .refused("refusing \(shown(here)): a symbolic link is in the way, and wb does not follow links inside \(path)")
        case EXDEV:
            return .refused("refusing \(shown(here)): it leads outside \(path)")
        case ENOTDIR:
            // O_DIRECTORY | O_NOFOLLOW reports a symlink as ENOTDIR: name which it is.
            var st = stat()
            if let name, fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_IFMT == S_IFLNK {
                return .refused("refusing \(shown(here)): it is a symbolic link, and wb does not follow links inside \(path)")
            }
            return .refused("refusing \(shown(here)): \(name != nil ? "it" : "a component of it") is not a directory")
        default:
            return .system(call: "\(call)(\(shown(here)))", errno: e, what: what)
        }
    }
}
