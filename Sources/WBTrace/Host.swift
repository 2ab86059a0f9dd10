import CWBNative
import Foundation
import Glibc

extension HostInfo {
    /// This machine: hostname, kernel release and CPU features.
    public static func current() -> HostInfo {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, 255)
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: u.release) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
        let host = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return HostInfo(hostname: host, kernel: release, cpu: CPUFeatures.current())
    }
}

extension CPUFeatures {
    /// This machine's CPU, read once.
    public static let host = current()

    public static func current() -> CPUFeatures {
        let text = (try? Paths.readText("/proc/cpuinfo")) ?? ""
        var vendor = "", model = "", flags: [String] = []
        for line in text.split(separator: "\n") {
            if line.isEmpty { break }   // first processor only
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimming(" \t") }
            guard parts.count == 2 else { continue }
            switch parts[0] {
            case "vendor_id": vendor = parts[1]
            case "model name": model = parts[1]
            case "flags": flags = parts[1].split(separator: " ").map(String.init)
            default: break
            }
        }
        var regs: [UInt32] = [0, 0, 0, 0]
        regs.withUnsafeMutableBufferPointer { wb_cpuid(0xD, 0, $0.baseAddress) }
        return CPUFeatures(vendor: vendor, model: model, flags: flags, xcr0: wb_xgetbv0(), xsaveSize: regs[1])
    }
}
