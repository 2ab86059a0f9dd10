import CWBNative
import Glibc

/// Another process's memory, read and written with process_vm_readv/writev (no need to have
/// the process stopped), with /proc/PID/mem for pages the process itself may not access.
public final class ProcessMemory {
    public let pid: Int32
    var memDescriptor: FileDescriptor?
    var pagemapDescriptor: FileDescriptor?

    public init(pid: Int32) { self.pid = pid }

    /// Reads tracee memory with process_vm_readv, falling back to /proc/PID/mem for pages the
    /// process itself may not read (PROT_NONE), which the kernel lets a tracer read.
    public func read(_ address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try ProcessMemory.checkRange(address, buffer.count, "process_vm_readv", "reading")
        var done = 0
        let e = wb_process_vm_readv(pid, buffer.baseAddress, address, buffer.count, &done)
        if e == 0 && done == buffer.count { return }
        if e == ESRCH { throw WBError.processGone(pid: pid, what: "reading memory at \(hex(address))") }
        try readThroughProcMem(address, into: buffer)
    }

    public func read(_ address: UInt64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(address, into: $0) }
        return out
    }

    public func readWord(_ address: UInt64) throws -> UInt64 {
        var v: UInt64 = 0
        try withUnsafeMutableBytes(of: &v) { try read(address, into: $0) }
        return v
    }

    /// Reads many (address, length) ranges into one buffer, in order.
    public func read(ranges: [UInt64], into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        let e = ranges.withUnsafeBufferPointer {
            wb_process_vm_readv_many(pid, buffer.baseAddress, $0.baseAddress, Int32($0.count / 2), &done)
        }
        if e == 0 { return }
        if e == ESRCH { throw WBError.processGone(pid: pid, what: "reading memory") }
        var at = 0
        for i in stride(from: 0, to: ranges.count, by: 2) {
            let len = Int(ranges[i + 1])
            try readThroughProcMem(ranges[i], into: UnsafeMutableRawBufferPointer(rebasing: buffer[at..<(at + len)]))
            at += len
        }
    }

    /// `read(ranges:into:)` that leaves pages shared copy-on-write shared. process_vm_readv
    /// pins what it reads, and the kernel gives a process an anonymous page of its own
    /// before letting it be pinned while another process maps it too: a checkpoint reading a
    /// forked child that way would leave the child and its parent a copy each of every page
    /// they shared (a preforked server's memory multiplied by its workers). Pages the process's
    /// pagemap shows mapped more than once are read through /proc/PID/mem, which copies
    /// without pinning; the rest, most pages of most processes, as before.
    public func readKeepingShared(ranges: [UInt64], into buffer: UnsafeMutableRawBufferPointer) throws {
        if pagemapDescriptor == nil {
            pagemapDescriptor = try FileDescriptor.open("/proc/\(pid)/pagemap", O_RDONLY, what: "opening the page map of pid \(pid)")
        }
        let map = pagemapDescriptor!
        // Runs of pages read the same way, in buffer order. A shared run is one address range
        // (one pread); the others gather ranges for one process_vm_readv.
        var groups: [(shared: Bool, at: Int, bytes: Int, ranges: [UInt64])] = []
        func add(_ shared: Bool, _ address: UInt64, _ length: Int, at: Int) {
            if let last = groups.last, last.shared == shared, last.at + last.bytes == at,
               !shared || last.ranges[0] + UInt64(last.bytes) == address {
                let n = groups.count - 1
                if shared { groups[n].ranges[1] += UInt64(length) } else { groups[n].ranges += [address, UInt64(length)] }
                groups[n].bytes += length
                return
            }
            groups.append((shared, at, length, [address, UInt64(length)]))
        }
        // One read of the page map for the whole batch when it spans little (a batch is
        // 8 MiB of pages, usually close together), else one per range.
        var spanStart: UInt64 = 0
        var span: [UInt64] = []
        if ranges.count >= 2 {
            let first = ranges[0] & ~4095, last = (0..<ranges.count / 2).map { ranges[2 * $0] + ranges[2 * $0 + 1] }.max() ?? first
            if last > first && last - first <= 256 << 20 {
                spanStart = first
                span = (try? ProcFS.pagemap(map, start: first, end: (last + 4095) & ~4095)) ?? []
            }
        }
        var at = 0
        for i in stride(from: 0, to: ranges.count, by: 2) {
            let start = ranges[i], length = Int(ranges[i + 1])
            let inSpan = !span.isEmpty && start >= spanStart && start % 4096 == 0
            let words = inSpan ? [] : ((try? ProcFS.pagemap(map, start: start, end: start + UInt64(length))) ?? [])
            let base = inSpan ? Int((start - spanStart) / 4096) : 0
            func shared(_ k: Int) -> Bool {
                let w: UInt64
                if inSpan { guard base + k < span.count else { return false }; w = span[base + k] } else { guard k < words.count else { return false }; w = words[k] }
                return w & ProcFS.pagePresent != 0 && w & ProcFS.pageExclusive == 0 && w & ProcFS.pageFileOrSharedAnon == 0
            }
            let pages = length / 4096
            var k = 0
            while k < pages {
                let kind = shared(k)
                var j = k
                while j + 1 < pages && shared(j + 1) == kind { j += 1 }
                add(kind, start + UInt64(k) * 4096, (j - k + 1) * 4096, at: at + k * 4096)
                k = j + 1
            }
            if pages * 4096 < length { add(false, start + UInt64(pages) * 4096, length - pages * 4096, at: at + pages * 4096) }
            at += length
        }
        for g in groups {
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[g.at..<(g.at + g.bytes)])
            if g.shared { try readThroughProcMem(g.ranges[0], into: slice) } else { try read(ranges: g.ranges, into: slice) }
        }
    }

    private func readThroughProcMem(_ address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        let mem = try memFile()
        let got = try withContext("reading memory of pid \(pid) at \(hex(address))") { try mem.read(into: buffer, at: address) }
        guard got == buffer.count else {
            throw WBError.system(call: "pread(/proc/\(pid)/mem)", errno: EIO, what: "reading \(buffer.count) bytes at \(hex(address))")
        }
    }

    /// Writes tracee memory. process_vm_writev respects page protections, so for read-only
    /// pages this goes through /proc/PID/mem, which a tracer may write.
    public func write(_ bytes: UnsafeRawBufferPointer, to address: UInt64) throws {
        try ProcessMemory.checkRange(address, bytes.count, "process_vm_writev", "writing")
        var done = 0
        let e = wb_process_vm_writev(pid, bytes.baseAddress, address, bytes.count, &done)
        if e == 0 && done == bytes.count { return }
        if e == ESRCH { throw WBError.processGone(pid: pid, what: "writing memory at \(hex(address))") }
        let mem = try memFile()
        try withContext("writing memory of pid \(pid) at \(hex(address))") { try mem.write(bytes, at: address) }
    }

    public func write(_ bytes: [UInt8], to address: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, to: address) }
    }

    /// Writes (local address, remote address, length) triples in as few calls as the kernel
    /// allows; the local memory must stay valid during the call.
    public func write(scatter triples: [UInt64]) throws {
        var done = 0
        let e = triples.withUnsafeBufferPointer { wb_process_vm_writev_scatter(pid, $0.baseAddress, Int32($0.count / 3), &done) }
        if e == 0 { return }
        if e == ESRCH { throw WBError.processGone(pid: pid, what: "writing memory") }
        for i in stride(from: 0, to: triples.count, by: 3) {
            let local = UnsafeRawPointer(bitPattern: UInt(triples[i]))
            try write(UnsafeRawBufferPointer(start: local, count: Int(triples[i + 2])), to: triples[i + 1])
        }
    }

    /// Writes read-only memory (code: breakpoints) through /proc/PID/mem directly.
    public func writeCode(_ bytes: [UInt8], to address: UInt64) throws {
        try ProcessMemory.checkRange(address, bytes.count, "pwrite(/proc/\(pid)/mem)", "writing code")
        let mem = try memFile()
        try withContext("writing code of pid \(pid) at \(hex(address))") { try mem.write(bytes, at: address) }
    }

    /// Writes many (address, length) ranges from one buffer, in order.
    public func write(ranges: [UInt64], from buffer: UnsafeRawBufferPointer) throws {
        var done = 0
        let e = ranges.withUnsafeBufferPointer {
            wb_process_vm_writev_many(pid, buffer.baseAddress, $0.baseAddress, Int32($0.count / 2), &done)
        }
        if e == 0 { return }
        if e == ESRCH { throw WBError.processGone(pid: pid, what: "writing memory") }
        var at = 0
        for i in stride(from: 0, to: ranges.count, by: 2) {
            let len = Int(ranges[i + 1])
            try write(UnsafeRawBufferPointer(rebasing: buffer[at..<(at + len)]), to: ranges[i])
            at += len
        }
    }

    /// A range that runs past 2^64 (a debugger asking for bytes beyond the top of the address
    /// space) is no memory at all: EFAULT, as the kernel says for unmapped addresses, before
    /// any call sees a wrapped end.
    static func checkRange(_ address: UInt64, _ count: Int, _ call: String, _ doing: String) throws {
        guard count > 1, address.addingReportingOverflow(UInt64(count - 1)).overflow else { return }
        throw WBError.system(call: call, errno: EFAULT,
                             what: "\(doing) \(count) bytes at \(hex(address)): the range runs past the end of the address space")
    }

    func memFile() throws -> FileDescriptor {
        if let m = memDescriptor { return m }
        let m = try FileDescriptor.open("/proc/\(pid)/mem", O_RDWR, what: "opening the memory of pid \(pid)")
        memDescriptor = m
        return m
    }
}

extension Tracee {
    public func read(_ address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws { try memory.read(address, into: buffer) }
    public func read(_ address: UInt64, count: Int) throws -> [UInt8] { try memory.read(address, count: count) }
    public func readWord(_ address: UInt64) throws -> UInt64 { try memory.readWord(address) }
    public func read(ranges: [UInt64], into buffer: UnsafeMutableRawBufferPointer) throws { try memory.read(ranges: ranges, into: buffer) }
    public func write(_ bytes: UnsafeRawBufferPointer, to address: UInt64) throws { try memory.write(bytes, to: address) }
    public func write(_ bytes: [UInt8], to address: UInt64) throws { try memory.write(bytes, to: address) }
    public func write(ranges: [UInt64], from buffer: UnsafeRawBufferPointer) throws { try memory.write(ranges: ranges, from: buffer) }
}
