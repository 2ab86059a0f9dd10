import Foundation
import Glibc
import WBCore
import WBSystem

/// The verbs layer `wb run --ib` preloads (native/verbs, libwbverbs.so beside wb): it stands in
/// front of libibverbs and presents the emulated HCA wbsoft0, whose state lives in the
/// program's own memory, threads and sockets, so that wb's checkpoint of the program holds it.
public enum VerbsLayer {
    /// The environment variable that names the fabric directory, where each emulated device
    /// publishes its LID and the addresses it listens on.
    public static let fabricVariable = "WB_IB_FABRIC"
    public static let defaultFabric = "/tmp/wbsoft-fabric"

    /// The preload library: beside wb, or where WB_VERBS_LIBRARY says.
    public static func library() throws -> String {
        try PreloadLibrary.locate("libwbverbs.so", variable: "WB_VERBS_LIBRARY", neededBy: "--ib")
    }

    /// `environment` with the layer preloaded (ahead of any other preload) and the fabric set.
    public static func environment(_ environment: [String: String]) throws -> [String: String] {
        var env = environment
        let lib = try library()
        env["LD_PRELOAD"] = [lib, env["LD_PRELOAD"]].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ":")
        if env[fabricVariable]?.isEmpty ?? true { env[fabricVariable] = defaultFabric }
        return env
    }
}
