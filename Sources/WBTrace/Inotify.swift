import CWBNative
import Foundation
import Glibc

/// An inotify instance's watches as its fdinfo tells them: each watch names its file by a
/// handle (open_by_handle_at) on a filesystem (its device), which is opened to find the
/// file's path.
public enum Inotify {
    /// One "inotify wd:... ino:... sdev:... mask:... f_handle:..." line.
    public struct Mark: Sendable, Equatable {
        public var wd: Int32
        public var mask: UInt32
        public var device: UInt32
        public var handleType: Int32
        public var handle: [UInt8]
    }

    public static func marks(_ fdinfo: String) -> [Mark] {
        fdinfo.split(separator: "\n").compactMap { line -> Mark? in
            guard line.hasPrefix("inotify ") else { return nil }
            var f: [Substring: Substring] = [:]
            for part in line.dropFirst(8).split(separator: " ") {
                if let colon = part.firstIndex(of: ":") { f[part[..<colon]] = part[part.index(after: colon)...] }
            }
            guard let wd = f["wd"].flatMap({ Int32($0, radix: 16) }), let mask = f["mask"].flatMap({ UInt32($0, radix: 16) }),
                  let dev = f["sdev"].flatMap({ UInt32($0, radix: 16) }) else { return nil }
            let hex = Array(f["f_handle"] ?? "")
            let bytes = stride(from: 0, to: hex.count - 1, by: 2).compactMap { UInt8(String(hex[$0...$0 + 1]), radix: 16) }
            return Mark(wd: wd, mask: mask, device: dev, handleType: f["fhandle-type"].flatMap { Int32($0, radix: 16) } ?? 0, handle: bytes)
        }.sorted { $0.wd < $1.wd }
    }

    /// The path of the file a mark watches, found through a mount of its filesystem in wb's
    /// mount namespace; nil when there is none, or the file is gone.
    public static func path(of mark: Mark, mounts: [UInt32: String]) -> String? {
        guard let mountPoint = mounts[mark.device],
              let mount = try? FileDescriptor.open(mountPoint, O_RDONLY | O_DIRECTORY) else { return nil }
        var fd: Int32 = -1
        guard wb_open_by_handle(mount.rawValue, mark.handleType, mark.handle, UInt32(mark.handle.count), &fd) == 0 else { return nil }
        let file = FileDescriptor(owning: fd)
        guard let link = try? Paths.readLink("/proc/self/fd/\(file.rawValue)"), link.hasPrefix("/"), !link.hasSuffix(" (deleted)") else { return nil }
        return link
    }

    /// Mount points by the kernel's device number of their filesystem (as fdinfo's sdev:
    /// major << 20 | minor), the first one for each.
    public static func mounts() -> [UInt32: String] {
        var out: [UInt32: String] = [:]
        for line in ((try? Paths.readText("/proc/self/mountinfo")) ?? "").split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count > 4 else { continue }
            let mm = f[2].split(separator: ":")
            guard mm.count == 2, let major = UInt32(mm[0]), let minor = UInt32(mm[1]) else { continue }
            let key = major << 20 | minor
            if out[key] == nil { out[key] = String(f[4]).replacingOccurrences(of: "\\040", with: " ") }
        }
        return out
    }
}

/// A fanotify group's settings and marks as its fdinfo tells them ("fanotify flags:...
/// event-flags:..." and one line per mark, on an inode (with its file handle), a mount (by
/// mount id) or a whole filesystem (by device)).
public enum Fanotify {
    public struct Mark: Sendable, Equatable {
        public enum Target: Sendable, Equatable {
            case inode(Inotify.Mark)
            case mount(id: Int32)
            case filesystem(device: UInt32)
        }
        public var target: Target
        /// The mark's flags as fdinfo shows them (FAN_MARK_IGNORED_SURV_MODIFY,
        /// FAN_MARK_EVICTABLE, FAN_MARK_IGNORE).
        public var flags: UInt32
        public var mask: UInt64
        public var ignoredMask: UInt64
    }

    /// fanotify_init's flags and event_f_flags.
    public static func settings(_ fdinfo: String) -> (flags: UInt32, eventFlags: UInt32)? {
        for line in fdinfo.split(separator: "\n") where line.hasPrefix("fanotify flags:") {
            let f = fields(line)
            if let flags = f["flags"].flatMap({ UInt32($0, radix: 16) }), let ev = f["event-flags"].flatMap({ UInt32($0, radix: 16) }) {
                return (flags, ev)
            }
        }
        return nil
    }

    public static func marks(_ fdinfo: String) -> [Mark] {
        fdinfo.split(separator: "\n").compactMap { line -> Mark? in
            guard line.hasPrefix("fanotify "), !line.hasPrefix("fanotify flags:") else { return nil }
            let f = fields(line)
            guard let flags = f["mflags"].flatMap({ UInt32($0, radix: 16) }), let mask = f["mask"].flatMap({ UInt64($0, radix: 16) }),
                  let ignored = f["ignored_mask"].flatMap({ UInt64($0, radix: 16) }) else { return nil }
            let target: Mark.Target
            if let id = f["mnt_id"].flatMap({ Int32($0, radix: 16) }) {
                target = .mount(id: id)
            } else if let dev = f["sdev"].flatMap({ UInt32($0, radix: 16) }) {
                if f["ino"] != nil {
                    let hex = Array(f["f_handle"] ?? "")
                    let bytes = stride(from: 0, to: hex.count - 1, by: 2).compactMap { UInt8(String(hex[$0...$0 + 1]), radix: 16) }
                    target = .inode(Inotify.Mark(wd: 0, mask: UInt32(truncatingIfNeeded: mask), device: dev,
                                                 handleType: f["fhandle-type"].flatMap { Int32($0, radix: 16) } ?? 0, handle: bytes))
                } else {
                    target = .filesystem(device: dev)
                }
            } else {
                return nil
            }
            return Mark(target: target, flags: flags, mask: mask, ignoredMask: ignored)
        }
    }

    /// The mount point of mount `id` in the mount namespace of `pid`.
    public static func mountPoint(_ id: Int32, of pid: Int32) -> String? {
        for line in ((try? Paths.readText("/proc/\(pid)/mountinfo")) ?? "").split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count > 4, Int32(f[0]) == id { return String(f[4]).replacingOccurrences(of: "\\040", with: " ") }
        }
        return nil
    }

    private static func fields(_ line: Substring) -> [Substring: Substring] {
        var f: [Substring: Substring] = [:]
        for part in line.dropFirst("fanotify ".count).split(separator: " ") {
            if let colon = part.firstIndex(of: ":") { f[part[..<colon]] = part[part.index(after: colon)...] }
        }
        return f
    }
}
