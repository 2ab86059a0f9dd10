import CWBNative
import CWBRecord
import Foundation
import Glibc
import WBCore
import WBTrace

/// The controller's half of `wb run --record`. The program's input calls stop at wb through
/// the seccomp filter unless the preload library made them through its own `syscall`
/// instruction; wb lets a stopped call run to its end and logs what it returned. The
/// library's buffers are drained into the same log whenever the thread is stopped, so each
/// thread's records stay in the order it made the calls.
final class InputRecorder {
    let timeline: String
    let tracee: Tracee
    private var out: FileHandle?
    private(set) var segment = 0
    /// Each thread's buffer in the library, by thread.
    private var buffers: [Int32: UInt64] = [:]
    /// Calls let run to their end, by thread: number and arguments.
    private var pending: [Int32: (nr: Int, args: [UInt64])] = [:]
    private var failure: String?

    /// Where the library's `syscall; ret` goes in the program: out of the way of what the
    /// kernel and the loader pick.
    static let gadget: UInt64 = 0x5742_0000_0000

    init(timeline: String, tracee: Tracee) throws {
        self.timeline = timeline
        self.tracee = tracee
        try Paths.makeDirectories(InputLog.directory(timeline))
    }

    /// The filter a recorded program starts with.
    static var filter: SeccompFilter {
        SeccompFilter(traced: InputLog.stopping, allowedInstruction: gadget)
    }

    /// The preload library: beside wb, or where WB_RECORD_LIBRARY says.
    static func library() throws -> String {
        try PreloadLibrary.locate("libwbrecord.so", variable: "WB_RECORD_LIBRARY", neededBy: "--record")
    }

    /// Starts the log of what comes after checkpoint `number`.
    func begin(segment number: Int) throws {
        try out?.close()
        let path = InputLog.segment(timeline, number)
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw WBError.system(call: "open", errno: errno, what: "creating the input log \(path)")
        }
        out = h
        segment = number
    }

    func close() {
        try? out?.close()
        out = nil
    }

    private func append(_ data: [UInt8]) {
        guard let out, !data.isEmpty else { return }
        out.write(Data(data))
    }

    // MARK: Stops

    /// Handles a stop of a recorded thread; says how it goes on.
    func handle(_ tid: Int32, event: Int32) throws -> Tracee.Resume {
        switch event {
        case Tracee.seccompEvent:
            var regs = try tracee.registers(tid)
            let nr = Int(truncatingIfNeeded: regs.origRax)
            if nr == InputLog.marker {
                try marker(tid, &regs)
                return .continue
            }
            guard wb_record_traced(UInt32(truncatingIfNeeded: nr)) != 0 else { return .continue }
            drain(tid)
            pending[tid] = (nr, [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9])
            return .syscall
        case Tracee.syscallStopEvent:
            guard let call = pending.removeValue(forKey: tid) else { return .continue }
            let result = Int64(bitPattern: try tracee.registers(tid).rax)
            // Interrupted to be restarted: the restarted call stops at wb again.
            if (-516 ... -512).contains(result) { return .continue }
            log(tid: tid, nr: call.nr, args: call.args, result: result)
            return .continue
        case Int32(WB_PTRACE_EVENT_EXIT):
            drain(tid)
            return .continue
        default:
            return .continue
        }
    }

    private func marker(_ tid: Int32, _ regs: inout Registers) throws {
        var result: Int64 = 0
        switch Int32(truncatingIfNeeded: regs.rdi) {
        case WB_RECORD_OP_REGISTER:
            buffers[tid] = regs.rsi
        case WB_RECORD_OP_FLUSH:
            drain(tid)
        case WB_RECORD_OP_LARGE:
            drain(tid)
            let words = try tracee.read(regs.r10, count: 56).withUnsafeBytes { raw in (0..<7).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self) } }
            log(tid: tid, nr: Int(regs.rdx), args: Array(words[0..<6]), result: Int64(bitPattern: words[6]))
        default:
            result = -Int64(EINVAL)
        }
        // Not a real call: skipped, with its result in rax.
        regs.origRax = UInt64.max
        regs.rax = UInt64(bitPattern: result)
        try tracee.setRegisters(tid, regs)
    }

    /// Logs a call from the memory of the stopped process.
    private func log(tid: Int32, nr: Int, args: [UInt64], result: Int64) {
        var pid = tracee.pid
        var addr = [UInt64](repeating: 0, count: 256), len = [UInt64](repeating: 0, count: 256)
        let reader: wb_record_reader = { ctx, address, out, length in
            let pid = ctx!.load(as: Int32.self)
            var done = 0
            let e = wb_process_vm_readv(pid, out, address, length, &done)
            return e == 0 && done == length ? 0 : -1
        }
        let record: [UInt8] = withUnsafeMutablePointer(to: &pid) { ctx in
            args.withUnsafeBufferPointer { a in
                let n = wb_record_regions(UInt32(nr), a.baseAddress, result, reader, ctx, &addr, &len, 256)
                let size = Int(wb_record_size(n, len))
                var buf = [UInt8](repeating: 0, count: size)
                let written = buf.withUnsafeMutableBytes {
                    wb_record_encode($0.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt32(tid), UInt32(nr), a.baseAddress,
                                     result, n, addr, len, reader, ctx)
                }
                return Array(buf.prefix(Int(written)))
            }
        }
        if record.isEmpty {
            failure = "could not read what \(InputLog.names[nr] ?? "syscall \(nr)") returned in thread \(tid)"
            return
        }
        append(record)
    }

    /// Moves what the library kept in `tid`'s buffer (or every thread's) into the log.
    /// Every thread concerned is stopped.
    func drain(_ tid: Int32? = nil) {
        for (t, address) in buffers where tid == nil || t == tid {
            guard let header = try? tracee.read(address, count: MemoryLayout<wb_record_buffer>.size) else { continue }
            let (magic, used) = header.withUnsafeBytes { ($0.loadUnaligned(as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
            guard magic == WB_RECORD_BUFFER_MAGIC, used > 0, used <= 1 << 20,
                  let data = try? tracee.read(address + UInt64(MemoryLayout<wb_record_buffer>.size), count: Int(used)) else { continue }
            append(data)
            try? tracee.write(withUnsafeBytes(of: UInt64(0)) { Array($0) }, to: address + 8)
        }
    }

    /// At a checkpoint, with every thread stopped and drained: threads caught between a
    /// call the library made and the end of its record leave a note in the new log, so a
    /// replay from the checkpoint skips that record (the call was before it).
    func noteCallsInFlight() {
        for (t, address) in buffers {
            guard tracee.tids.contains(t),
                  let flag = try? tracee.read(address + 32, count: 8), flag.contains(where: { $0 != 0 }),
                  let regs = try? tracee.registers(t) else { continue }
            // Stopped in the call, the thread makes it again when it goes on (a restart:
            // back at the `syscall`, or just past it with a restart code the kernel acts on
            // when it resumes), and its record is still to come. Otherwise the call was made.
            let restarting = (-516 ... -512).contains(Int64(bitPattern: regs.rax)) && Int64(bitPattern: regs.origRax) >= 0
            if regs.rip == InputRecorder.gadget || (regs.rip == InputRecorder.gadget + 2 && restarting) { continue }
            var h = wb_record_header()
            h.size = UInt32(MemoryLayout<wb_record_header>.size)
            h.tid = UInt32(t)
            h.nr = WB_RECORD_SKIP_NEXT
            append(withUnsafeBytes(of: h) { Array($0) })
        }
    }

    /// Hides the vDSO from a program that has just been exec'd (its auxiliary vector says
    /// AT_IGNORE where AT_SYSINFO_EHDR was): its clock reads become syscalls wb records.
    static func hideVDSO(_ tracee: Tracee, _ tid: Int32) throws {
        let rsp = try tracee.registers(tid).rsp
        let argc = try tracee.memory.readWord(rsp)
        var at = rsp + 8 * (argc + 2)
        var guardCount = 0
        while try tracee.memory.readWord(at) != 0 {
            at += 8
            guardCount += 1
            if guardCount > 1 << 16 { return }
        }
        at += 8
        while true {
            let key = try tracee.memory.readWord(at)
            if key == 0 { return }
            if key == 33 /* AT_SYSINFO_EHDR */ {
                try tracee.write(withUnsafeBytes(of: UInt64(1) /* AT_IGNORE */) { Array($0) }, to: at)
                return
            }
            at += 16
        }
    }

    /// A problem that made the log incomplete, if one happened.
    var problem: String? { failure }
}
