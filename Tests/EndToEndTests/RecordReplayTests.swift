import Foundation
import Glibc
import Testing
import WBCore

/// wb run --record and wb replay on harness-msgserver: a server that crashes on the 700th
/// message of a scripted client, recorded, then replayed with the client gone.
@Suite(.serialized) struct RecordReplayTests {
    static let crashAt = 700

    /// Records the server until it crashes; returns the timeline and wb's stderr.
    static func recordCrash(_ dir: String) throws -> String {
        let timeline = "\(dir)/server.tl"
        let server = try Child(Products.wb, ["run", "--timeline", timeline, "--every", "150ms", "--record", "--",
                                             Products.harness("msgserver"), "--crash-at", "\(crashAt)"])
        let listening = try #require(server.line(startingWith: "LISTENING"), "\(server.rest())")
        let port = try #require(field(listening, "port"))
        // Checkpoints come while the server waits in accept(), too.
        usleep(400_000)
        let client = try Child(Products.harness("msgserver"), ["--client", port, "--messages", "1000"])
        // The client sees the server go at the 700th message.
        #expect(client.wait(timeout: 120) == 2 << 8)
        #expect(server.wait(timeout: 120) == (128 + SIGSEGV) << 8, "\(server.stderrText)")
        // The client is gone for good: the replay cannot lean on it.
        #expect(kill(client.pid, 0) != 0)
        return timeline
    }

    @Test func aRecordedServerCrashIsReplayedWithTheClientGone() throws {
        let dir = scratchDirectory()
        let timeline = try RecordReplayTests.recordCrash(dir)
        let list = try TimelineTests.json(try wb("timeline", timeline, "--json").stdout)
        let checkpoints = try #require(list["checkpoints"] as? [[String: Any]])
        #expect(checkpoints.first?["reason"] as? String == "start")
        #expect(checkpoints.last?["reason"] as? String == "fault")
        #expect(try Paths.list("\(timeline)/record").contains("000001.log"))

        let replay = try wb("replay", timeline, "--json")
        #expect(replay.code == 0, "\(replay.stdout)\(replay.stderr)")
        let r = try TimelineTests.json(replay.stdout)
        #expect(r["reproduced"] as? Bool == true, "\(replay.stdout)")
        #expect(r["signal"] as? String == "SIGSEGV")
        // The same instruction, and the same frames all the way down.
        #expect(r["pc"] as? String == r["recordedPC"] as? String)
        #expect(r["sameInstruction"] as? Bool == true && r["sameBacktrace"] as? Bool == true)
        let frames = try #require(r["backtrace"] as? [[String: Any]])
        #expect(frames.first?["function"] as? String == "commit_message")
        #expect(frames.contains { $0["function"] as? String == "serve" })
        // Every call logged after the checkpoint is fed back. (There may be none: a checkpoint
        // can fall between the last input call and the crash when the machine is busy.)
        #expect(r["callsReplayed"] != nil && r["callsReplayed"] as? Int == r["callsLogged"] as? Int, "\(replay.stdout)")
        // From every checkpoint before the crash, the start of the program included.
        for c in checkpoints.dropLast() {
            let number = try #require(c["number"] as? Int)
            let from = try wb("replay", timeline, "--from", "\(number)", "--json")
            let o = try TimelineTests.json(from.stdout)
            #expect(from.code == 0 && o["pc"] as? String == r["pc"] as? String, "from \(number): \(from.stdout)")
            #expect(o["callsReplayed"] as? Int == o["callsLogged"] as? Int, "from \(number): \(from.stdout)")
            if c["reason"] as? String == "start" {
                // From the start, at least one read for each message up to the crash.
                #expect((o["callsReplayed"] as? Int ?? 0) >= RecordReplayTests.crashAt, "\(from.stdout)")
            }
        }

        // In gdb, at the fault: the message that broke it, from the log.
        let gdb = try wb(["replay", timeline, "--debug", "--", "-batch", "-ex", "print total", "-ex", "print account"], timeout: 180)
        #expect(gdb.stdout.contains("$1 = \(RecordReplayTests.crashAt)"), "\(gdb.stdout)\(gdb.stderr)")
        #expect(gdb.stdout.contains("$2 = (struct account *) 0x0"), "\(gdb.stdout)")
    }

    @Test func aLogThatEndsTooSoonIsADivergence() throws {
        let dir = scratchDirectory()
        let timeline = try RecordReplayTests.recordCrash(dir)
        let listing = try wb("timeline", timeline, "--json")
        try #require(listing.code == 0, "\(listing.stderr)")
        let list = try TimelineTests.json(listing.stdout)
        let checkpoints = try #require(list["checkpoints"] as? [[String: Any]])
        let before = try #require(checkpoints.dropLast().last?["number"] as? Int)
        // Half of the log after the last checkpoint before the crash is lost.
        let log = "\(timeline)/record/\(String(format: "%06d", before)).log"
        let records = try Paths.readBytes(log, limit: 1 << 30)
        var cut = 0
        var at = 0
        while at < records.count / 2 {
            let size = records.withUnsafeBytes { Int($0.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
            at += size
            cut = at
        }
        #expect(truncate(log, off_t(cut)) == 0)
        let replay = try wb("replay", timeline, "--json")
        #expect(replay.code == 1)
        // A divergence is a report, not an error.
        try #require(replay.stdout.hasPrefix("{"), "\(replay.stderr)")
        let r = try TimelineTests.json(replay.stdout)
        #expect(r["reproduced"] as? Bool == false)
        #expect((r["divergence"] as? String)?.contains("after the end of its log") == true, "\(replay.stdout)")

        // A timeline that was not recorded says so.
        let plain = try wb("replay", dir, "--json")
        #expect(plain.code != 0)
        let unrecorded = try wb(["run", "--timeline", "\(dir)/plain.tl", "--every", "1s", "--quiet", "--", "/bin/true"])
        #expect(unrecorded.code == 0, "\(unrecorded.stderr)")
        let refused = try wb("replay", "\(dir)/plain.tl")
        #expect(refused.code != 0 && refused.stderr.contains("--record"), "\(refused.stderr)")
    }
}
