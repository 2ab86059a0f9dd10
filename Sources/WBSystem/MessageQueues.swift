import CWBNative
import Glibc

/// POSIX message queues (mq_open) from wb's side, through an fd of the queue (a
/// /proc/PID/fd/N link opened again). Nothing here blocks.
public enum MessageQueues {
    /// What reading a queue's file tells: messages queued (QSIZE counts bytes), and the
    /// notification registered with mq_notify (`notifyPid` 0: none).
    public struct Status: Sendable, Equatable {
        public var bytes: UInt64, notify: Int32, signal: Int32, notifyPid: Int32
    }

    /// The queue's status line, "QSIZE:N NOTIFY:N SIGNO:N NOTIFY_PID:N", read from `path`.
    public static func status(_ path: String) throws -> Status {
        let text = try Paths.readText(path)
        var fields: [String: Int64] = [:]
        for word in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            let parts = word.split(separator: ":", maxSplits: 1)
            if parts.count == 2, let value = Int64(parts[1]) { fields[String(parts[0])] = value }
        }
        guard let bytes = fields["QSIZE"] else {
            throw WBError.failed("\(path) is not a POSIX message queue (its file reads \"\(text.prefix(60))\")")
        }
        return Status(bytes: UInt64(max(bytes, 0)), notify: Int32(truncatingIfNeeded: fields["NOTIFY"] ?? 0),
                      signal: Int32(truncatingIfNeeded: fields["SIGNO"] ?? 0), notifyPid: Int32(truncatingIfNeeded: fields["NOTIFY_PID"] ?? 0))
    }

    /// mq_getattr: the most messages the queue holds, the longest message, messages queued.
    public static func attributes(_ fd: FileDescriptor) throws -> (maxMessages: Int64, messageSize: Int64, queued: Int64) {
        var maxMessages: Int64 = 0, size: Int64 = 0, queued: Int64 = 0
        try check(wb_mq_attributes(fd.rawValue, &maxMessages, &size, &queued), "mq_getattr", "reading a message queue's attributes")
        return (maxMessages, size, queued)
    }

    /// Takes every message from the queue, in the order receivers get them (highest priority
    /// first, oldest first within one), and sends them back in that order: the queue is as it
    /// was, and the caller has a copy. Run only while every process using the queue is
    /// stopped. A message that cannot be sent back (someone else filled the queue meanwhile)
    /// is an error naming how many were lost, never a silent loss.
    public static func copyMessages(_ fd: FileDescriptor, messageSize: Int64, what: String) throws -> [(priority: UInt32, bytes: [UInt8])] {
        var taken: [(priority: UInt32, bytes: [UInt8])] = []
        var buffer = [UInt8](repeating: 0, count: Int(max(messageSize, 1)))
        var failure: Int32 = 0
        while true {
            var priority: UInt32 = 0, length = 0
            let r = buffer.withUnsafeMutableBytes { wb_mq_take(fd.rawValue, $0.baseAddress, $0.count, &priority, &length) }
            if r == EAGAIN { break }
            if r != 0 { failure = r; break }
            taken.append((priority, Array(buffer[0..<length])))
        }
        var returned = 0
        for m in taken {
            let r = m.bytes.withUnsafeBytes { wb_mq_put(fd.rawValue, $0.baseAddress, $0.count, m.priority) }
            if r != 0 {
                throw WBError.failed("\(what): \(taken.count - returned) of its \(taken.count) messages could not be put back (\(String(cString: strerror(r)))): another process filled the queue meanwhile")
            }
            returned += 1
        }
        if failure != 0 { try check(failure, "mq_timedreceive", "reading the messages of \(what)") }
        return taken
    }

    /// Sends `messages` (in order) to the queue open on `fd`.
    public static func send(_ fd: FileDescriptor, _ messages: [(priority: UInt32, bytes: [UInt8])], what: String) throws {
        for m in messages {
            try check(m.bytes.withUnsafeBytes { wb_mq_put(fd.rawValue, $0.baseAddress, $0.count, m.priority) },
                      "mq_timedsend", "putting the messages of \(what) back")
        }
    }
}
