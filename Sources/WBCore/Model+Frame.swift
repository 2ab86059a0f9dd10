import Foundation

/// One frame of a backtrace.
public struct Frame: Codable, Sendable, Equatable {
    public init(pc: UInt64, function: String?, offset: UInt64, module: String?, file: String?, line: Int?) {
        self.pc = pc; self.function = function; self.offset = offset; self.module = module; self.file = file; self.line = line
    }

    public var pc: UInt64
    public var function: String?
    /// From the function's start; without a function (no symbol covers the address), from
    /// the start of the module.
    public var offset: UInt64
    public var module: String?
    public var file: String?
    public var line: Int?

    /// "0x55d0c8a01234 in main+0x24 at /src/main.c:42 (prog)"
    public var description: String {
        var s = hex(pc)
        if let f = function { s += " in \(f)" + (offset > 0 ? "+0x\(String(offset, radix: 16))" : "") }
        if let file, let line { s += " at \(file):\(line)" }
        if let m = module {
            let name = m.split(separator: "/").last.map(String.init) ?? m
            // Without a symbol, where in the file: module+offset.
            s += function == nil && offset > 0 ? " (\(name)+0x\(String(offset, radix: 16)))" : " (\(name))"
        }
        return s
    }
}

