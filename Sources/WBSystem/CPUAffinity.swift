import CWBNative
import Foundation

/// Which CPUs a thread may run on, and its I/O priority, read and set from outside it.
public enum CPUAffinity {
    /// The CPUs in a list as the kernel writes them ("0-3,8,10-11"); nil when it is not one.
    public static func parse(_ list: String) -> Set<Int>? {
        var out = Set<Int>()
        for part in list.trimming(" \n").split(separator: ",") {
            let ends = part.split(separator: "-")
            guard let a = Int(ends[0]), a >= 0, a < 1 << 16 else { return nil }
            guard ends.count <= 2, let b = ends.count == 2 ? Int(ends[1]) : a, b >= a, b < 1 << 16 else { return nil }
            out.formUnion(a...b)
        }
        return out
    }

    /// A list as the kernel writes them.
    public static func format(_ cpus: Set<Int>) -> String {
        var parts: [String] = []
        var start: Int?, last = -2
        for c in cpus.sorted() {
            if c != last + 1, let s = start { parts.append(s == last ? "\(s)" : "\(s)-\(last)"); start = nil }
            if start == nil { start = c }
            last = c
        }
        if let s = start { parts.append(s == last ? "\(s)" : "\(s)-\(last)") }
        return parts.joined(separator: ",")
    }

    /// The CPUs online here.
    public static func online() -> Set<Int> {
        (try? Paths.readText("/sys/devices/system/cpu/online")).flatMap(parse) ?? Set(0..<ProcessInfo.processInfo.activeProcessorCount)
    }

    /// The CPUs thread `tid` may run on.
    public static func get(_ tid: Int32) -> Set<Int>? {
        var mask = [UInt64](repeating: 0, count: 1024)
        guard wb_affinity(tid, 0, &mask, Int32(mask.count)) == 0 else { return nil }
        var out = Set<Int>()
        for (w, word) in mask.enumerated() where word != 0 {
            for b in 0..<64 where word & (1 << UInt64(b)) != 0 { out.insert(w * 64 + b) }
        }
        return out
    }

    /// Binds thread `tid` to `cpus`; the errno on failure.
    public static func set(_ tid: Int32, _ cpus: Set<Int>) -> Int32? {
        var mask = [UInt64](repeating: 0, count: 1024)
        for c in cpus where c < 1024 * 64 { mask[c / 64] |= 1 << UInt64(c % 64) }
        let r = wb_affinity(tid, 1, &mask, Int32(mask.count))
        return r == 0 ? nil : -r
    }

    /// Thread `tid`'s I/O priority (class << 13 | level; 0 is none, which follows its nice).
    public static func ioPriority(_ tid: Int32) -> Int32? {
        let r = wb_ioprio(tid, 0, 0)
        return r < 0 ? nil : r
    }

    /// Sets thread `tid`'s I/O priority; the errno on failure.
    public static func setIOPriority(_ tid: Int32, _ value: Int32) -> Int32? {
        let r = wb_ioprio(tid, 1, value)
        return r == 0 ? nil : -r
    }
}
