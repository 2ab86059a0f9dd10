import Foundation
import Glibc
import WBTrace

extension Checkpointer {
    /// Mappings with a NUMA memory policy of their own (mbind): get_mempolicy(MPOL_F_ADDR) of
    /// each mapping, run in the stopped leader in one batch (MPOL_DEFAULT for a mapping that
    /// has none: it follows the thread that touches it).
    func captureNUMAPolicies(_ tracee: Tracee, into p: inout ProcessState) throws {
        guard let words = NUMAPolicy.possibleNodeWords, !p.mappings.isEmpty else { return }
        let skipped: Set<Mapping.Kind> = [.vdso, .vvar, .vvarVclock, .vsyscall]
        let indices = p.mappings.indices.filter { !skipped.contains(p.mappings[$0].kind) }
        let each = 8 + words * 8
        let (results, outputs) = try tracee.batch(in: pid, count: indices.count, outputBytes: indices.count * each) { outputs in
            indices.enumerated().map { k, i -> (SyscallNumber, [UInt64]) in
                let at = outputs + UInt64(k * each)
                return (.getMempolicy, [at, at + 8, UInt64(words * 64), p.mappings[i].start, 2 /* MPOL_F_ADDR */])
            }
        }
        let v = outputs.words
        var found: [(Int, NUMAPolicy)] = []
        for (k, i) in indices.enumerated() where results[k] == 0 {
            let b = k * each / 8
            let policy = NUMAPolicy(mode: Int32(truncatingIfNeeded: v[b]), mask: Array(v[b + 1..<b + 1 + words]))
            if policy.mode != 0 { found.append((i, policy)) }
        }
        for (i, policy) in found { p.mappings[i].numaPolicy = policy }
    }
}
