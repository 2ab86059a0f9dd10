import CWBNative
import Glibc

/// Which pages of a running process were written since wb last looked: its anonymous memory
/// is write-protected with a userfaultfd in async mode (the kernel resolves each first write
/// by itself and marks the page written), and `PageScanner` reports, and re-protects, the
/// written pages. The process is never stopped for it, and if wb dies the protection goes
/// with the userfaultfd: the process does not notice. One thread uses it at a time (it may
/// be handed to another to be released).
public final class DirtyTracker: @unchecked Sendable {
    public let pid: Int32
    private let uffd: FileDescriptor
    private var events: UnsafeMutableRawPointer?
    /// The ranges registered for tracking.
    public private(set) var ranges: [(start: UInt64, end: UInt64)] = []

    /// Creates the userfaultfd inside the stopped process (it must be made by the process
    /// whose memory it tracks) and takes it over; the process keeps no copy.
    public init(tracee: Tracee, syscalls: RemoteSyscalls) throws {
        pid = tracee.pid
        let remote = try syscalls.call(.userfaultfd, UInt64(O_CLOEXEC | O_NONBLOCK), what: "creating a userfaultfd")
        var local: Int32 = -1
        let e = wb_take_fd(pid, Int32(remote), &local)
        _ = try? syscalls.raw(.close, remote)
        try check(e, "pidfd_getfd", "taking the userfaultfd of pid \(pid)", pid: pid)
        uffd = FileDescriptor(owning: local)
        var features: UInt64 = 0
        try check(wb_uffd_api_wp_async(local, &features), "ioctl(UFFDIO_API)", "enabling asynchronous write-protect")
        events = wb_uffd_events_start(local)
    }

    /// Registers a range; false when the kernel will not track it (not anonymous memory).
    @discardableResult
    public func register(start: UInt64, end: UInt64) -> Bool {
        guard wb_uffd_register_wp(uffd.rawValue, start, end - start) == 0 else { return false }
        if !ranges.contains(where: { $0.start <= start && end <= $0.end }) { ranges.append((start, end)) }
        return true
    }

    /// How much memory one protect or unprotect call covers, so the process's own page
    /// faults are never held up for long.
    public static let step: UInt64 = 64 << 20

    /// The registered ranges cut into parts of at most `step`, in address order.
    public var steps: [(start: UInt64, end: UInt64)] {
        ranges.flatMap { r in
            stride(from: r.start, to: r.end, by: Int(DirtyTracker.step)).map { ($0, min(r.end, $0 + DirtyTracker.step)) }
        }
    }

    /// Write-protects every registered range, `step` at a time.
    public func protectAll() throws {
        for s in steps { try protect(start: s.start, end: s.end) }
    }

    /// Write-protects [start, end): at most `step` long, or pages wb has just put back.
    public func protect(start: UInt64, end: UInt64) throws {
        try check(writeProtect(start, end - start, true), "ioctl(UFFDIO_WRITEPROTECT)", "write-protecting \(hex(start))")
    }

    /// UFFDIO_WRITEPROTECT, again while the process is changing its mappings (EAGAIN until
    /// the event reader has taken the change's event). A range no longer mapped is fine.
    private func writeProtect(_ start: UInt64, _ len: UInt64, _ on: Bool) -> Int32 {
        for _ in 0..<10_000 {
            let e = wb_uffd_writeprotect(uffd.rawValue, start, len, on ? 1 : 0)
            if e == EAGAIN { usleep(100); continue }
            return e == ENOENT ? 0 : e
        }
        return EAGAIN
    }

    /// Ranges the process discarded (MADV_DONTNEED), unmapped or moved away since the last
    /// call: the pages stored for them are no longer there.
    public func takeRemoved() -> [(start: UInt64, end: UInt64)] {
        var out: [(UInt64, UInt64)] = []
        var buffer = [UInt64](repeating: 0, count: 512)
        while true {
            let n = Int(buffer.withUnsafeMutableBufferPointer { wb_uffd_events_take(events, $0.baseAddress, 256) })
            for i in 0..<n { out.append((buffer[2 * i], buffer[2 * i + 1])) }
            if n < 256 { return out }
        }
    }

    /// Removes the registration, and with it every protection, `step` at a time (each step
    /// holds the process's mappings still while it walks them), then the userfaultfd (which
    /// also clears whatever a step left, such as a range the process has remapped since).
    public func release() {
        for s in steps { _ = wb_uffd_unregister(uffd.rawValue, s.start, s.end - s.start) }
        ranges = []
        wb_uffd_events_stop(events)
        events = nil
        uffd.close()
    }

    /// Whether this kernel has PAGEMAP_SCAN (Linux 6.7+), asked of an empty range.
    public static var supported: Bool {
        guard let fd = try? FileDescriptor.open("/proc/self/pagemap", O_RDONLY) else { return false }
        var region = wb_page_region()
        var count: UInt64 = 0, walkEnd: UInt64 = 0
        return wb_pagemap_scan(fd.rawValue, 0x1000, 0x2000, 0, 0, UInt64(WB_PAGE_IS_PRESENT), UInt64(WB_PAGE_IS_PRESENT),
                               &region, 1, &count, &walkEnd) == 0
    }
}
