import CWBNative
import Foundation
import Glibc

extension Registers {
    init(_ r: wb_regs) {
        self.init()
        r15 = r.r15; r14 = r.r14; r13 = r.r13; r12 = r.r12; rbp = r.rbp; rbx = r.rbx
        r11 = r.r11; r10 = r.r10; r9 = r.r9; r8 = r.r8; rax = r.rax; rcx = r.rcx; rdx = r.rdx
        rsi = r.rsi; rdi = r.rdi; origRax = r.orig_rax; rip = r.rip; cs = r.cs; eflags = r.eflags
        rsp = r.rsp; ss = r.ss; fsBase = r.fs_base; gsBase = r.gs_base; ds = r.ds; es = r.es; fs = r.fs; gs = r.gs
    }

    var native: wb_regs {
        wb_regs(r15: r15, r14: r14, r13: r13, r12: r12, rbp: rbp, rbx: rbx, r11: r11, r10: r10, r9: r9, r8: r8,
                rax: rax, rcx: rcx, rdx: rdx, rsi: rsi, rdi: rdi, orig_rax: origRax, rip: rip, cs: cs,
                eflags: eflags, rsp: rsp, ss: ss, fs_base: fsBase, gs_base: gsBase, ds: ds, es: es, fs: fs, gs: gs)
    }
}

extension Tracee {
    public func registers(_ tid: Int32) throws -> Registers {
        var r = wb_regs()
        try check(wb_ptrace_getregs(tid, &r), "ptrace(PTRACE_GETREGS)", "reading the registers of thread \(tid)", pid: tid)
        return Registers(r)
    }

    public func setRegisters(_ tid: Int32, _ regs: Registers) throws {
        var r = regs.native
        try check(wb_ptrace_setregs(tid, &r), "ptrace(PTRACE_SETREGS)", "writing the registers of thread \(tid)", pid: tid)
    }

    /// The XSAVE area (x87, SSE, AVX, AVX-512, ... state) in standard format.
    public func xstate(_ tid: Int32) throws -> Data {
        var buf = [UInt8](repeating: 0, count: 64 * 1024)
        var len = buf.count
        try check(buf.withUnsafeMutableBytes { wb_ptrace_getregset(tid, Int32(WB_NT_X86_XSTATE), $0.baseAddress, &len) },
                  "ptrace(PTRACE_GETREGSET, NT_X86_XSTATE)", "reading the XSAVE area of thread \(tid)", pid: tid)
        return Data(buf[0..<len])
    }

    public func setXstate(_ tid: Int32, _ data: Data) throws {
        try check(data.withUnsafeBytes { wb_ptrace_setregset(tid, Int32(WB_NT_X86_XSTATE), $0.baseAddress, $0.count) },
                  "ptrace(PTRACE_SETREGSET, NT_X86_XSTATE)", "writing the XSAVE area of thread \(tid)", pid: tid)
    }

    public func signalMask(_ tid: Int32) throws -> UInt64 {
        var mask: UInt64 = 0
        try check(wb_ptrace_getsigmask(tid, &mask), "ptrace(PTRACE_GETSIGMASK)", "reading the signal mask of thread \(tid)", pid: tid)
        return mask
    }

    public func setSignalMask(_ tid: Int32, _ mask: UInt64) throws {
        try check(wb_ptrace_setsigmask(tid, mask), "ptrace(PTRACE_SETSIGMASK)", "setting the signal mask of thread \(tid)", pid: tid)
    }

    /// Queued signals of one thread, or of the whole process with `shared`.
    public func pendingSignals(_ tid: Int32, shared: Bool) throws -> [PendingSignal] {
        var out: [PendingSignal] = []
        var buf = [UInt8](repeating: 0, count: 128 * 32)
        while true {
            var count: Int32 = 0
            try check(buf.withUnsafeMutableBytes { wb_ptrace_peeksiginfo(tid, shared ? 1 : 0, UInt64(out.count), $0.baseAddress, 32, &count) },
                      "ptrace(PTRACE_PEEKSIGINFO)", "reading the pending signals of thread \(tid)", pid: tid)
            if count <= 0 { break }
            for i in 0..<Int(count) {
                let info = Data(buf[(i * 128)..<((i + 1) * 128)])
                let sig = info.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
                out.append(PendingSignal(signal: sig, siginfo: info))
            }
        }
        return out
    }

    public func rseq(_ tid: Int32) throws -> RseqRegistration? {
        var c = wb_rseq_config()
        let e = wb_ptrace_get_rseq_config(tid, &c)
        if e == EIO || e == EINVAL { return nil }   // kernel without rseq
        try check(e, "ptrace(PTRACE_GET_RSEQ_CONFIGURATION)", "reading the rseq registration of thread \(tid)", pid: tid)
        guard c.rseq_abi_pointer != 0 else { return nil }
        return RseqRegistration(address: c.rseq_abi_pointer, size: c.rseq_abi_size, signature: c.signature, flags: c.flags)
    }

    public func robustList(_ tid: Int32) throws -> RobustList {
        var head: UInt64 = 0, len: UInt64 = 0
        try check(wb_get_robust_list(tid, &head, &len), "get_robust_list", "reading the robust futex list of thread \(tid)", pid: tid)
        return RobustList(head: head, length: len)
    }
}

extension Tracee {
    /// The seccomp filters of a stopped thread, oldest first, each as its struct sock_filter
    /// array (PTRACE_SECCOMP_GET_FILTER: index 0 is the first installed; the kernel needs
    /// CAP_SYS_ADMIN for it). `count` is Seccomp_filters from the thread's /proc status.
    public func seccompFilters(_ tid: Int32, count: Int) throws -> [Data] {
        var out: [Data] = []
        for index in 0..<count {
            var instructions = 0
            var e = wb_ptrace(0x420C /* PTRACE_SECCOMP_GET_FILTER */, tid, UInt64(index), 0, &instructions)
            if e == ENOENT { break }
            if e == EACCES || e == EPERM {
                throw WBError.refused("thread \(tid) has seccomp filters, and wb may not read them (PTRACE_SECCOMP_GET_FILTER needs CAP_SYS_ADMIN): run wb checkpoint as root")
            }
            try check(e, "ptrace(PTRACE_SECCOMP_GET_FILTER)", "reading seccomp filter \(index) of thread \(tid)", pid: tid)
            guard instructions > 0, instructions <= 4096 else {
                throw WBError.failed("seccomp filter \(index) of thread \(tid) has \(instructions) instructions")
            }
            var program = [UInt8](repeating: 0, count: instructions * 8)
            e = program.withUnsafeMutableBytes { buf in
                wb_ptrace(0x420C, tid, UInt64(index), UInt64(UInt(bitPattern: buf.baseAddress!)), &instructions)
            }
            try check(e, "ptrace(PTRACE_SECCOMP_GET_FILTER)", "reading seccomp filter \(index) of thread \(tid)", pid: tid)
            out.append(Data(program))
        }
        return out
    }
}
