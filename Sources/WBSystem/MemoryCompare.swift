import CWBNative

public enum MemoryCompare {
    /// True when `count` bytes at `p` are all zero.
    @inline(__always)
    public static func isZero(_ p: UnsafeRawPointer, count: Int) -> Bool { wb_is_zero(p, count) != 0 }
}
