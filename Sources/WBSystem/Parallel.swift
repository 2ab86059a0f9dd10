import Dispatch

/// Runs independent pieces of work on every core: the checkpoint's per-fd reads while the
/// process is stopped (each a handful of system calls on a file of its own), where the stop's
/// length is the cost that matters.
public enum Parallel {
    /// `body(i)` for i in 0..<count, spread over the cores; the results in order. The first
    /// error thrown (by index) is rethrown once all are done.
    public static func map<T>(_ count: Int, _ body: (Int) throws -> T) throws -> [T] {
        if count < 16 { return try (0..<count).map(body) }
        let results = UnsafeMutableBufferPointer<Result<T, Error>?>.allocate(capacity: count)
        results.initialize(repeating: nil)
        defer { results.deinitialize(); results.deallocate() }
        // Each index is written by one iteration only.
        nonisolated(unsafe) let slots = results
        withoutActuallyEscaping(body) { body in
            nonisolated(unsafe) let work = body
            DispatchQueue.concurrentPerform(iterations: count) { i in
                slots[i] = Result { try work(i) }
            }
        }
        return try results.map { try $0!.get() }
    }
}
