import CCapstone
import CIBVerbs
import CLibDW
import CLibUnwindPtrace
import Glibc
import Testing

/// The system-library module maps compile and link against this machine's libraries.
@Suite struct ModuleMapTests {
    @Test func capstoneDisassemblesASyscall() {
        var handle: csh = 0
        #expect(cs_open(CS_ARCH_X86, CS_MODE_64, &handle) == CS_ERR_OK)
        defer { cs_close(&handle) }
        let code: [UInt8] = [0x0F, 0x05]
        var insn: UnsafeMutablePointer<cs_insn>?
        let n = code.withUnsafeBufferPointer { cs_disasm(handle, $0.baseAddress, 2, 0x1000, 0, &insn) }
        #expect(n == 1)
        let name = withUnsafeBytes(of: insn!.pointee.mnemonic) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        #expect(name == "syscall")
        cs_free(insn, n)
    }

    @Test func libdwReportsItsVersion() {
        let v = dwfl_version(nil)
        #expect(v != nil && String(cString: v!).hasPrefix("0."))
    }

    @Test func libunwindPtraceCreatesAnAddressSpace() {
        let space = _Ux86_64_create_addr_space(&_UPT_accessors, 0)
        #expect(space != nil)
        _Ux86_64_destroy_addr_space(space)
    }

    @Test func libibverbsListsDevicesWithoutHardware() {
        var count: Int32 = -1
        let list = ibv_get_device_list(&count)
        // No InfiniBand hardware here: the library answers with an empty list, not a crash.
        #expect(count >= 0)
        if let list { ibv_free_device_list(list) }
    }
}
