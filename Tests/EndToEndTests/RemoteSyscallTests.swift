import Foundation
import Glibc
import Testing
import WBTrace

/// The ptrace controller on a live process: remote system calls run inside it and leave it
/// exactly as it was.
@Suite struct RemoteSyscallTests {
    @Test func injectedCallsRunInTheTargetAndRestoreItsRegisters() throws {
        let program = try Child(Products.harness("heap"), ["2"])
        _ = try #require(program.line(startingWith: "READY"))
        let tracee = try Tracee.seize(program.pid)
        let before = try tracee.registers(program.pid)
        let maskBefore = try tracee.signalMask(program.pid)
        let maps = try ProcFS.maps(program.pid, withFlags: false)
        tracee.syscallGadget = try tracee.findSyscallGadget(in: maps)
        let (pid, tid, scratchWord) = try tracee.withSyscalls(in: program.pid) { s -> (UInt64, UInt64, UInt64) in
            let pid = try s.call(.getpid, what: "getpid")
            let tid = try s.call(.gettid, what: "gettid")
            let scratch = try s.mapScratch(bytes: 4096)
            try tracee.write([1, 2, 3, 4, 5, 6, 7, 8], to: scratch)
            let word = try tracee.readWord(scratch)
            try s.call(.munmap, scratch, 4096, what: "munmap")
            // A failing call reports its errno, and the session goes on.
            #expect(try s.raw(.close, 999_999) == -Int64(EBADF))
            return (pid, tid, word)
        }
        #expect(pid == UInt64(program.pid) && tid == UInt64(program.pid))
        #expect(scratchWord == 0x0807060504030201)
        #expect(try tracee.registers(program.pid) == before)
        #expect(try tracee.signalMask(program.pid) == maskBefore)
        // The scratch page is gone again.
        let after = try ProcFS.maps(program.pid, withFlags: false)
        #expect(after.map(\.start) == maps.map(\.start))
        tracee.detach()
        #expect(tracerOf(program.pid) == "0")
        program.signal(SIGUSR1)
        #expect(program.line(startingWith: "VERIFY")?.hasPrefix("VERIFY OK") == true)
    }
}
