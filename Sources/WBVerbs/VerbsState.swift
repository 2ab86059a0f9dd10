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

    private static func decode(_ memory: ImageMemory, at base: UInt64, image: Image) throws -> VerbsState {
        guard let h = memory.read(base, count: headerBytes) else { throw WBError.badImage(path: image.path, problem: "the verbs state at 0x\(String(base, radix: 16)) is cut short") }
        func u16(_ b: [UInt8], _ at: Int) -> UInt16 { UInt16(b[at]) | UInt16(b[at + 1]) << 8 }
        func u32(_ b: [UInt8], _ at: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) } }
        func u64(_ b: [UInt8], _ at: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) } }
        func text(_ b: ArraySlice<UInt8>) -> String { String(decoding: b.prefix { $0 != 0 }, as: UTF8.self) }
        let version = u32(h, 8), capacity = Int(u32(h, 12)), used = Int(u32(h, 16))
        guard version == 1 else { throw WBError.badImage(path: image.path, problem: "the verbs state has version \(version); this wb reads version 1") }
        guard capacity <= maxRecords, used <= capacity else {
            throw WBError.badImage(path: image.path, problem: "the verbs state claims \(used) of \(capacity) records (at most \(maxRecords))")
        }
        var state = VerbsState(device: text(h[32..<48]), lid: u16(h, 20), tcpPort: u16(h, 22), udpPort: u16(h, 24),
                               fabric: text(h[64..<320]), undescribed: u32(h, 28), objects: [])
        let kinds = [1: "pd", 2: "mr", 3: "cq", 4: "qp", 5: "srq", 6: "ah"]
        let qpTypes: [UInt8: String] = [2: "RC", 3: "UC", 4: "UD"]
        let qpStates: [UInt8: String] = [0: "RESET", 1: "INIT", 2: "RTR", 3: "RTS", 4: "SQD", 5: "SQE", 6: "ERR"]
        let accessNames: [(UInt32, String)] = [(1, "local-write"), (2, "remote-write"), (4, "remote-read"), (8, "remote-atomic")]
        for i in 0..<used {
            let at = base + UInt64(headerBytes + i * recordBytes)
            guard let r = memory.read(at, count: recordBytes) else { throw WBError.badImage(path: image.path, problem: "the verbs state's record \(i) is not in the image") }
            guard r[0] != 0 else { continue }
            guard let kind = kinds[Int(r[0])] else { throw WBError.badImage(path: image.path, problem: "the verbs state's record \(i) has unknown kind \(r[0])") }
            var o = Object(kind: kind, id: u32(r, 4))
            switch kind {
            case "mr":
                o.address = u64(r, 8); o.length = u64(r, 16); o.rkey = u32(r, 24); o.pd = u32(r, 52)
                let access = u32(r, 28)
                o.access = accessNames.filter { access & $0.0 != 0 }.map(\.1)
            case "cq":
                o.entries = u32(r, 56); o.completionsWaiting = u32(r, 48)
            case "qp":
                o.type = qpTypes[r[1]] ?? "type \(r[1])"
                o.state = qpStates[r[2]] ?? "state \(r[2])"
                o.pd = u32(r, 52)
                if r[1] == 4 { o.qkey = u32(r, 24) } else { o.peerLID = u16(r, 32); o.peerQP = u32(r, 24) }
                o.sendsOutstanding = u32(r, 36); o.receivesPosted = u32(r, 40); o.requestsHeld = u32(r, 44)
            case "srq":
                o.receivesPosted = u32(r, 40); o.pd = u32(r, 52)
            case "ah":
                o.peerLID = u16(r, 32); o.pd = u32(r, 52)
            default:
                break
            }
            state.objects.append(o)
        }
        return state
    }

    /// One line: the device and what is on it.
    public var summary: String {
        let count = Dictionary(grouping: objects, by: \.kind).mapValues(\.count)
        let qps = objects.filter { $0.kind == "qp" }
        let outstanding = qps.reduce(0) { $0 + Int($1.sendsOutstanding ?? 0) }, posted = objects.reduce(0) { $0 + Int($1.receivesPosted ?? 0) }
        let kinds = ["pd", "mr", "cq", "srq", "qp", "ah"].compactMap { k in count[k].map { "\($0) \(k.uppercased())" } }.joined(separator: ", ")
        return "pid \(pid) \(device) LID 0x\(String(lid, radix: 16)): \(kinds); \(outstanding) sends outstanding, \(posted) receives posted"
    }

    public var text: String {
        var lines = ["VERBS pid \(pid): \(device) (emulated; LID 0x\(String(lid, radix: 16)), listening on TCP \(tcpPort) and UDP \(udpPort); fabric \(fabric))"]
        let count = Dictionary(grouping: objects, by: \.kind).mapValues(\.count)
        lines.append("  " + ["pd", "mr", "cq", "srq", "qp", "ah"].compactMap { k in count[k].map { "\($0) \(k.uppercased())" } }.joined(separator: ", "))
        for o in objects {
            switch o.kind {
            case "mr":
                lines.append("  MR lkey 0x\(String(o.id, radix: 16)) rkey 0x\(String(o.rkey ?? 0, radix: 16))  0x\(String(o.address ?? 0, radix: 16)) \(o.length ?? 0) bytes  \((o.access ?? []).joined(separator: ",").nonEmpty ?? "local-read")")
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

private extension String {
    var nonEmpty: String? { isEmpty ? nil : self }
}
