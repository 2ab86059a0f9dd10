import Foundation
import WBCore

/// The verbs state of a process run with `wb run --ib`, as its image holds it: the area the
/// verbs layer keeps in its own data (native/verbs/wbverbs_state.h), read from the image's
/// memory and checked here, where it is decoded.
public struct VerbsState: Codable, Sendable {
    /// The process (its pid at the checkpoint).
    public var pid: Int32 = 0
    public var device: String
    public var lid: UInt16
    public var tcpPort: UInt16
    public var udpPort: UInt16
    public var fabric: String
    /// Objects the layer could not describe (its table was full).
    public var undescribed: UInt32
    public var objects: [Object]

    public struct Object: Codable, Sendable {
        /// pd, mr, cq, qp, srq or ah.
        public var kind: String
        /// QP: its number; MR: its local key; others: the handle.
        public var id: UInt32
        public var pd: UInt32?
        // Memory regions.
        public var address: UInt64?
        public var length: UInt64?
        public var rkey: UInt32?
        public var access: [String]?
        // Completion queues.
        public var entries: UInt32?
        public var completionsWaiting: UInt32?
        // Queue pairs (and SRQs' receives).
        public var type: String?
        public var state: String?
        public var peerLID: UInt16?
        public var peerQP: UInt32?
        public var qkey: UInt32?
        public var sendsOutstanding: UInt32?
        public var receivesPosted: UInt32?
        public var requestsHeld: UInt32?
    }

    static let magic = Array("WBVERBS1".utf8)
    static let headerBytes = 320, recordBytes = 64, maxRecords = 4096

    /// The state of every process of the image that opened the emulated device (in the
    /// order of the image's processes); empty when none ran on the verbs layer.
    public static func read(_ image: Image) throws -> [VerbsState] {
        try image.metadata.processes.compactMap { try read(image, process: $0) }
    }

    /// `process`'s state, or nil when it did not open the emulated device.
    public static func read(_ image: Image, process: ProcessState) throws -> VerbsState? {
        let maps = process.mappings.sorted { $0.start < $1.start }
        guard let first = maps.firstIndex(where: { ($0.path ?? "").hasSuffix("/libwbverbs.so") }) else { return nil }
        let memory = try ImageMemory(image: image, files: ResolvedFiles(), process: process)
        // The library's writable mappings and the zero-filled data right after them.
        var candidates: [Mapping] = []
        var previousEnd: UInt64 = 0
        for m in maps[first...] {
            let ours = (m.path ?? "").hasSuffix("/libwbverbs.so")
            let adjacentData = m.kind == .anonymous && m.path == nil && m.start == previousEnd
            guard ours || adjacentData else { break }
            if m.protection & 2 != 0 { candidates.append(m) }
            previousEnd = m.end
        }
        for m in candidates {
            var page = m.start
            while page < m.end {
                if memory.read(page, count: 8) == magic {
                    var state = try decode(memory, at: page, image: image)
                    state.pid = process.pid
                    return state
                }
                page += 4096
            }
        }
        return nil
    }

    // The layouts of wbverbs_state.h, field by field.
    private static func decode(_ memory: ImageMemory, at base: UInt64, image: Image) throws -> VerbsState {
        func bad(_ problem: String) -> WBError { WBError.badImage(path: image.path, problem: problem) }
        guard let header = memory.read(base, count: headerBytes) else { throw bad("the verbs state at 0x\(String(base, radix: 16)) is cut short") }
        var h = RecordReader(header)
        try h.skip(8)  // magic, already matched
        let version = try h.u32(), capacity = Int(try h.u32()), used = Int(try h.u32())
        guard version == 1 else { throw bad("the verbs state has version \(version); this wb reads version 1") }
        guard capacity <= maxRecords, used <= capacity else { throw bad("the verbs state claims \(used) of \(capacity) records (at most \(maxRecords))") }
        let lid = try h.u16(), tcpPort = try h.u16(), udpPort = try h.u16()
        try h.skip(2)
        let undescribed = try h.u32(), device = try h.text(16)
        try h.skip(16)
        var state = VerbsState(device: device, lid: lid, tcpPort: tcpPort, udpPort: udpPort, fabric: try h.text(256),
                               undescribed: undescribed, objects: [])
        let kinds: [UInt8: String] = [1: "pd", 2: "mr", 3: "cq", 4: "qp", 5: "srq", 6: "ah"]
        let qpTypes: [UInt8: String] = [2: "RC", 3: "UC", 4: "UD"]
        let qpStates: [UInt8: String] = [0: "RESET", 1: "INIT", 2: "RTR", 3: "RTS", 4: "SQD", 5: "SQE", 6: "ERR"]
        let accessNames: [(UInt32, String)] = [(1, "local-write"), (2, "remote-write"), (4, "remote-read"), (8, "remote-atomic")]
        for i in 0..<used {
            let at = base + UInt64(headerBytes + i * recordBytes)
            guard let record = memory.read(at, count: recordBytes) else { throw bad("the verbs state's record \(i) is not in the image") }
            var r = RecordReader(record)
            let code = try r.u8(), type = try r.u8(), qpState = try r.u8()
            guard code != 0 else { continue }
            guard let kind = kinds[code] else { throw bad("the verbs state's record \(i) has unknown kind \(code)") }
            try r.skip(1)
            var o = Object(kind: kind, id: try r.u32())
            let address = try r.u64(), length = try r.u64(), key = try r.u32(), access = try r.u32(), peerLID = try r.u16()
            try r.skip(2)
            let sends = try r.u32(), recvs = try r.u32(), held = try r.u32(), completions = try r.u32(), pd = try r.u32(), cqe = try r.u32()
            switch kind {
            case "mr":
                o.address = address; o.length = length; o.rkey = key; o.pd = pd
                o.access = accessNames.filter { access & $0.0 != 0 }.map(\.1)
            case "cq":
                o.entries = cqe; o.completionsWaiting = completions
            case "qp":
                o.type = qpTypes[type] ?? "type \(type)"
                o.state = qpStates[qpState] ?? "state \(qpState)"
                o.pd = pd
                if type == 4 { o.qkey = key } else { o.peerLID = peerLID; o.peerQP = key }
                o.sendsOutstanding = sends; o.receivesPosted = recvs; o.requestsHeld = held
            case "srq":
                o.receivesPosted = recvs; o.pd = pd
            case "ah":
                o.peerLID = peerLID; o.pd = pd
            default:
                break
            }
            state.objects.append(o)
        }
        return state
    }

    /// One line: the device and what is on it.
    public var summary: String {
        let outstanding = objects.reduce(0) { $0 + Int($1.sendsOutstanding ?? 0) }, posted = objects.reduce(0) { $0 + Int($1.receivesPosted ?? 0) }
        return "pid \(pid) \(device) LID 0x\(String(lid, radix: 16)): \(counts); \(outstanding) sends outstanding, \(posted) receives posted"
    }

    /// How many objects of each kind: "1 PD, 2 MR, ...".
    private var counts: String {
        let count = Dictionary(grouping: objects, by: \.kind).mapValues(\.count)
        return ["pd", "mr", "cq", "srq", "qp", "ah"].compactMap { k in count[k].map { "\($0) \(k.uppercased())" } }.joined(separator: ", ")
    }

    public var text: String {
        var lines = ["VERBS pid \(pid): \(device) (emulated; LID 0x\(String(lid, radix: 16)), listening on TCP \(tcpPort) and UDP \(udpPort); fabric \(fabric))"]
        lines.append("  " + counts)
        for o in objects {
            switch o.kind {
            case "mr":
                lines.append("  MR lkey 0x\(String(o.id, radix: 16)) rkey 0x\(String(o.rkey ?? 0, radix: 16))  0x\(String(o.address ?? 0, radix: 16)) \(o.length ?? 0) bytes  \(o.access.flatMap { $0.isEmpty ? nil : $0.joined(separator: ",") } ?? "local-read")")
            case "cq":
                lines.append("  CQ \(o.id)  \(o.entries ?? 0) entries, \(o.completionsWaiting ?? 0) completions waiting")
            case "qp":
                let peer = o.type == "UD" ? "Q_Key 0x\(String(o.qkey ?? 0, radix: 16))" : "peer LID 0x\(String(o.peerLID ?? 0, radix: 16)) QP 0x\(String(o.peerQP ?? 0, radix: 16))"
                lines.append("  QP 0x\(String(o.id, radix: 16)) \(o.type ?? "") \(o.state ?? "")  \(peer)  \(o.sendsOutstanding ?? 0) sends outstanding, \(o.receivesPosted ?? 0) receives posted, \(o.requestsHeld ?? 0) requests held")
            case "srq":
                lines.append("  SRQ \(o.id)  \(o.receivesPosted ?? 0) receives posted")
            default:
                break
            }
        }
        if undescribed > 0 { lines.append("  (\(undescribed) more objects were not described: the layer's table was full)") }
        return lines.joined(separator: "\n")
    }
}
