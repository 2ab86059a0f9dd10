import Foundation
import Glibc
import WBSystem

/// wb's preload libraries (libwbrecord.so, libwbverbs.so) sit beside the wb executable; an
/// environment variable can name another copy.
public enum PreloadLibrary {
    /// The path of `file`: where `variable` says, or beside wb. `option` names what needs it,
    /// for the error when it is missing.
    public static func locate(_ file: String, variable: String, neededBy option: String) throws -> String {
        if let path = ProcessInfo.processInfo.environment[variable] {
            guard access(path, R_OK) == 0 else {
                throw WBError.invalidArgument("\(variable)=\(path): no such library; unset it to use the one beside wb")
            }
            return path
        }
        let exe = (try? Paths.readLink("/proc/self/exe")) ?? CommandLine.arguments[0]
        let path = (exe as NSString).deletingLastPathComponent + "/" + file
        guard access(path, R_OK) == 0 else {
            throw WBError.failed("\(option) needs \(file) beside wb (\(path)): build it with `swift build`, or set \(variable)")
        }
        return path
    }
}
