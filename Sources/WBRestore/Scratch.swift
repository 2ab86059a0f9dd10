import WBTrace

/// A small RWX area wb maps into the process it rebuilds: its first bytes are the `syscall`
/// instruction remote calls go through, the rest holds their arguments.
final class Scratch {
    let tracee: Tracee
    let base: UInt64
    let size: UInt64
    private var cursor: UInt64

    /// Room for the largest argument an image can ask for (65,536 supplementary groups).
    static let bytes: UInt64 = 80 * 4096

    init(tracee: Tracee, base: UInt64) {
        self.tracee = tracee
        self.base = base
        size = Scratch.bytes
        cursor = base + 4096
    }

    /// Starts handing out argument space from the beginning again.
    func reset() { cursor = base + 4096 }

    /// Copies bytes into the area (16-byte aligned) and returns their address.
    func put(_ bytes: [UInt8]) throws -> UInt64 {
        let at = (cursor + 15) & ~15
        guard at + UInt64(bytes.count) <= base + size else {
            throw WBError.failed("an argument of \(bytes.count) bytes does not fit in the restore's work area of \(size) bytes")
        }
        try tracee.write(bytes, to: at)
        cursor = at + UInt64(max(bytes.count, 1))
        return at
    }

    func put(string: String) throws -> UInt64 { try put(Array(string.utf8) + [0]) }

    func put(words: [UInt64]) throws -> UInt64 {
        var out: [UInt8] = []
        out.reserveCapacity(words.count * 8)
        for w in words { withUnsafeBytes(of: w.littleEndian) { out.append(contentsOf: $0) } }
        return try put(out)
    }

    /// Little-endian 32-bit words (gid_t lists, capability data).
    func put(words32: [UInt32]) throws -> UInt64 {
        var out: [UInt8] = []
        out.reserveCapacity(words32.count * 4)
        for w in words32 { withUnsafeBytes(of: w.littleEndian) { out.append(contentsOf: $0) } }
        return try put(out)
    }

    /// Reserves `count` zeroed bytes for a call to fill in.
    func reserve(_ count: Int) throws -> UInt64 { try put([UInt8](repeating: 0, count: count)) }

    /// Where RemoteSyscalls.batchCode sits (written with the syscall gadget at `base`).
    static let batchCodeOffset: UInt64 = 64
    /// Where `forkCode` sits: a child of the tree forked from its rebuilt parent (clone3
    /// through its `syscall`) goes on in a pause loop there until wb takes it, as a stub does.
    static let forkCodeOffset: UInt64 = 16
    static let forkCode: [UInt8] = [
        0x0F, 0x05,                      // syscall (the clone3)
        0xB8, 34, 0x00, 0x00, 0x00,      // 1: mov $SYS_pause, %eax
        0x0F, 0x05,                      //    syscall
        0xEB, 0xF7,                      //    jmp 1b
    ]
    /// Calls a batch round trip lays out at once, at the end of the area (arguments grow from
    /// its start).
    static let batchChunk = 1024

    /// Runs `calls` in the process a round trip per 1,024 (RemoteSyscalls.batch): a thousand
    /// sockets are made, moved and placed in a few round trips instead of thousands. Returns
    /// each call's raw result.
    func batch(_ calls: [(SyscallNumber, [UInt64])], leader: RemoteSyscalls) throws -> [Int64] {
        var out: [Int64] = []
        out.reserveCapacity(calls.count)
        let table = base + size - UInt64(Scratch.batchChunk * 64)
        for start in stride(from: 0, to: calls.count, by: Scratch.batchChunk) {
            out += try leader.batch(Array(calls[start..<min(calls.count, start + Scratch.batchChunk)]),
                                    code: base + Scratch.batchCodeOffset, table: table)
        }
        return out
    }
}
