import CWBSymbols
import Foundation
import Glibc
import WBCore

/// Unwinds threads and names code addresses with libdwfl: call-frame information and
/// symbols from the ELF files the process had mapped (with their separate debug info, when
/// found by build-id), registers and stack memory from an image or a live process.
public final class Backtracer {
    private let unwinder: OpaquePointer
    private var tids: [Int32] = []
    private var registers: [UInt64] = []
    private var reader: (UInt64) -> UInt64?
    private var attached = false

    /// For an image: modules from its file mappings, memory from `ImageMemory`.
    public convenience init(image: Image, files: ResolvedFiles, debugDirectories: [String] = []) throws {
        let memory = try ImageMemory(image: image, files: files)
        try self.init(mappings: image.process.mappings, files: files, debugDirectories: debugDirectories,
                      read: { memory.readWord($0) })
        attach(pid: image.process.pid, threads: image.process.threads.map { ($0.tid, $0.registers) })
    }

    /// For any source of memory: `read` returns the word at an address, or nil.
    public init(mappings: [Mapping], files: ResolvedFiles, debugDirectories: [String], read: @escaping (UInt64) -> UInt64?) throws {
        let path = ([":.debug:/usr/lib/debug"] + debugDirectories).joined(separator: ":")
        guard let u = wb_unwinder_new(path) else { throw WBError.failed("starting libdwfl: \(String(cString: wb_unwinder_error()))") }
        unwinder = u
        reader = read
        var reported = Set<String>()
        for m in mappings where m.kind == .file && m.offset == 0 {
            guard let id = m.file, let local = files.path(for: id) else { continue }
            let key = "\(m.start)"
            if reported.contains(key) { continue }
            reported.insert(key)
            _ = wb_unwinder_add_module(u, m.path ?? local, local, m.start)
        }
        _ = wb_unwinder_modules_done(u)
    }

    deinit { wb_unwinder_free(unwinder) }

    var unwinderHandle: OpaquePointer { unwinder }

    /// The threads to unwind, with their registers.
    public func attach(pid: Int32, threads: [(Int32, Registers)]) {
        tids = threads.map(\.0)
        // DWARF order: rax rdx rcx rbx rsi rdi rbp rsp r8-r15 rip.
        registers = threads.flatMap { (_, r) in
            [r.rax, r.rdx, r.rcx, r.rbx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rip]
        }
        let context = Unmanaged.passUnretained(self).toOpaque()
        let read: wb_read_word_fn = { ctx, address, word in
            let me = Unmanaged<Backtracer>.fromOpaque(ctx!).takeUnretainedValue()
            guard let v = me.reader(address) else { return -1 }
            word!.pointee = v
            return 0
        }
        attached = tids.withUnsafeBufferPointer { t in
            registers.withUnsafeBufferPointer { r in
                wb_unwinder_attach(unwinder, pid, t.baseAddress, r.baseAddress, Int32(t.count), read, context) == 0
            }
        }
    }

    /// The frames of thread `tid`, innermost first.
    public func backtrace(_ tid: Int32, maxFrames: Int = 64) -> [Frame] {
        guard attached else { return [] }
        var frames = [wb_frame](repeating: wb_frame(), count: maxFrames)
        let n = tids.withUnsafeBufferPointer { _ in
            registers.withUnsafeBufferPointer { _ in
                frames.withUnsafeMutableBufferPointer { wb_unwinder_backtrace(unwinder, tid, $0.baseAddress, Int32(maxFrames)) }
            }
        }
        guard n > 0 else { return [] }
        return frames.prefix(Int(n)).map(Backtracer.frame)
    }

    /// Names one code address.
    public func symbolize(_ pc: UInt64, exact: Bool = true) -> Frame {
        var f = wb_frame()
        wb_unwinder_symbolize(unwinder, pc, exact ? 1 : 0, &f)
        return Backtracer.frame(f)
    }

    static func frame(_ f: wb_frame) -> Frame {
        func text<T>(_ tuple: T) -> String? {
            let s = withUnsafeBytes(of: tuple) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
            return s.isEmpty ? nil : s
        }
        return Frame(pc: f.pc, function: text(f.function), offset: f.function_offset, module: text(f.module),
                     file: text(f.file), line: f.line > 0 ? Int(f.line) : nil)
    }
}
