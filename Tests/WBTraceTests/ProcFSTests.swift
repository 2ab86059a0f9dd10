import Foundation
import Glibc
import Testing
@testable import WBTrace

@Suite struct ProcFSTests {
    /// Regions of several PAGEMAP_SCAN calls, which may report a page twice (one past
    /// walk_end, again from the next call), come out in order, each page once, none lost.
    @Test func scanRegionsFromSeveralCallsBecomeDisjoint() {
        func r(_ a: UInt64, _ b: UInt64) -> PageScanner.Range { .init(start: a << 12, end: b << 12, file: false, written: true) }
        let got = PageScanner.disjoint([r(1, 3), r(10, 12), r(5, 6), r(11, 14), r(2, 4), r(20, 21)])
        #expect(got.map { [$0.start >> 12, $0.end >> 12] } == [[1, 3], [3, 4], [5, 6], [10, 12], [12, 14], [20, 21]])
        #expect(PageScanner.disjoint([r(1, 2), r(4, 5)]) == [r(1, 2), r(4, 5)])
    }

    @Test func parsesSmapsWithFlagsAndPathsWithSpaces() {
        let text = """
        55d0c8a00000-55d0c8a02000 r--p 00000000 fe:00 1234                       /usr/bin/my prog
        Size:                  8 kB
        VmFlags: rd mr mw me dw sd
        7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]
        VmFlags: rd wr mr mw me gd ac
        7f0000000000-7f0000001000 rw-s 00000000 00:01 99                 /dev/zero (deleted)
        """
        let maps = ProcFS.parseMaps(text)
        #expect(maps.count == 3)
        #expect(maps[0].path == "/usr/bin/my prog" && maps[0].inode == 1234 && maps[0].protection == 1)
        #expect(maps[0].vmFlags == ["rd", "mr", "mw", "me", "dw", "sd"])
        #expect(maps[1].path == "[stack]" && maps[1].vmFlags.contains("gd") && maps[1].protection == 3)
        #expect(maps[2].shared && maps[2].path == "/dev/zero (deleted)")
    }

    @Test func parsesStatWithParenthesesInTheName() {
        let stat = ProcFS.parseStat("42 (a (weird) name) S 1 42 42 0 -1 4194560 100\n")
        #expect(stat[1] == "42" && stat[2] == "a (weird) name" && stat[3] == "S" && stat[4] == "1" && stat[10] == "100")
    }

    @Test func parsesFDInfoFlagsInOctal() {
        let info = ProcFS.parseFDInfo("pos:\t37\nflags:\t0102002\nmnt_id:\t25\nino:\t77\n")
        #expect(info.position == 37 && info.flags == 0o102002 && info.mountID == 25 && info.extra["ino"] == "77")
    }

    /// An epoll set's fdinfo: its fields, then one "tfd:" line per watch (the kernel's
    /// layout, with the watched file's inode and device), none of them a field.
    @Test func parsesEpollWatchesAndTheFieldsBeforeThem() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\n"
            + "tfd:        5 events:       19 data:                5  pos:0 ino:2c5b sdev:8\n"
            + "tfd:       12 events: 80000001 data: ffffffffffffffff  pos:0 ino:4d2 sdev:8\n"
            + "tfd: 7 events: 1 data: 0\n"
            + "tfd: x events: 1 data: 0\n"
        let info = ProcFS.parseFDInfo(text)
        #expect(info.flags == 2 && info.extra["ino"] == "1057" && info.extra["tfd"] == nil)
        let watches = ProcFS.parseEpollWatchesWithInodes(text)
        #expect(watches.count == 3)
        #expect(watches[0].watch == EpollWatch(fd: 5, events: 0x19, data: 5) && watches[0].inode == 0x2c5b)
        #expect(watches[1].watch == EpollWatch(fd: 12, events: 0x8000_0001, data: UInt64.max) && watches[1].inode == 0x4d2)
        #expect(watches[2].watch == EpollWatch(fd: 7, events: 1, data: 0) && watches[2].inode == nil)
    }

    /// A process in a pid namespace of its own: NSpid lists its pids tab-separated, the
    /// last its own number there (1 for the namespace's first process).
    @Test func theInnermostPidOfAProcessInAPidNamespaceOfItsOwn() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        p.arguments = ["--pid", "--fork", "--kill-child", "sleep", "30"]
        try p.run()
        var child: Int32?
        defer {
            if let child { kill(child, SIGKILL) }
            p.terminate()
            p.waitUntilExit()
        }
        for _ in 0..<200 where child == nil {
            child = ProcFS.children(p.processIdentifier).first
            if child == nil { usleep(10_000) }
        }
        let inner = try #require(child)
        #expect(ProcFS.innermostPid(inner) == 1)
        #expect(ProcFS.innermostPid(getpid()) == getpid())
    }

    @Test func parsesStatusLines() {
        let s = ProcFS.parseStatus("Name:\tcat\nUmask:\t0027\nUid:\t0\t0\t0\t0\nSigQ:\t1/1000\n")
        #expect(s["Umask"] == "0027" && s["Uid"] == "0\t0\t0\t0")
    }
}
