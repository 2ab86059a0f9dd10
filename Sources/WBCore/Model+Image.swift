import Foundation

/// The metadata section of an image: where it came from and the process it holds.
public struct ImageMetadata: Codable, Sendable, Equatable {
    /// Version of this metadata schema (see docs/image-format.md).
    public var schema: Int
    public var createdAt: String
    public var tool: String
    public var host: HostInfo
    public var process: ProcessState
    public var files: [EmbeddedFile]
    /// How the checkpoint went: what it refused to store, what it left behind.
    public var notes: [String]
    /// Files outside the image holding page data (a timeline's page store), for page runs
    /// whose `source` is k (the k-th, from 1). Absent in self-contained images.
    public var pageSources: [PageSource]?
    /// With `wb checkpoint --tree`: the root's descendants, parents before their children.
    /// Absent for an image of one process.
    public var descendants: [ProcessState]?
    /// The nftables table (family inet) that holds the TCP connections of a checkpoint taken
    /// with --kill: their peers see a pause until a restore has rebuilt them and deletes it.
    /// Absent when the image holds no connection, or the process was left running.
    public var networkLock: String?

    public static let currentSchema = 1

    public init(host: HostInfo, process: ProcessState, files: [EmbeddedFile], notes: [String]) {
        schema = ImageMetadata.currentSchema
        createdAt = ISO8601DateFormatter().string(from: Date())
        tool = "wb \(WBVersion.string)"
        self.host = host; self.process = process; self.files = files; self.notes = notes
    }

    public func file(_ hash: ContentHash) -> EmbeddedFile? { files.first { $0.hash == hash } }

    /// The root process and its descendants, parents first.
    public var processes: [ProcessState] { [process] + (descendants ?? []) }

    /// Whether the image needs files beside it (format version 2).
    public var isSelfContained: Bool { (pageSources ?? []).isEmpty && !files.contains { $0.source != nil } }
}

/// A file of whole pages outside the image: `path` relative to the image's directory,
/// `length` bytes, `checksum` as the PAGE section's (XXH3-64 of the pages' XXH3-64 digests).
public struct PageSource: Codable, Sendable, Equatable {
    public var path: String
    public var length: UInt64
    public var checksum: UInt64
    public init(path: String, length: UInt64, checksum: UInt64) {
        self.path = path; self.length = length; self.checksum = checksum
    }
}

public enum WBVersion {
    public static let string = "0.1.0"
}

public struct HostInfo: Codable, Sendable, Equatable {
    public var hostname: String
    public var kernel: String
    public var cpu: CPUFeatures
    public init(hostname: String, kernel: String, cpu: CPUFeatures) {
        self.hostname = hostname; self.kernel = kernel; self.cpu = cpu
    }
}

/// The checkpoint host's CPU: what its processes may have picked instructions for.
public struct CPUFeatures: Codable, Sendable, Equatable {
    public var vendor: String
    public var model: String
    /// Feature flags as /proc/cpuinfo lists them.
    public var flags: [String]
    /// XCR0: the XSAVE features the kernel enabled.
    public var xcr0: UInt64
    /// Size of the XSAVE area for XCR0 (CPUID 0xD).
    public var xsaveSize: UInt32
    public init(vendor: String, model: String, flags: [String], xcr0: UInt64, xsaveSize: UInt32) {
        self.vendor = vendor; self.model = model; self.flags = flags; self.xcr0 = xcr0; self.xsaveSize = xsaveSize
    }
}
