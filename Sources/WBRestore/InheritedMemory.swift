import WBCore

/// What a child of a tree takes from its rebuilt parent by being forked from it: the pages it
/// shared with the parent copy-on-write at the checkpoint (the image's runs of both name the
/// same data for them, see WBCheckpoint's CopyOnWrite) stay one physical page for both. For
/// each of the child's mappings that shares any, the mapping the fork gave it is kept; of its
/// pages, those the child holds differently are written, and those the parent holds and the
/// child does not (zeros for the child) are discarded.
struct InheritedMemory {
    struct Plan {
        /// Runs of the pages the child writes itself (its own data).
        var write: [PageRun]
        /// Page ranges [first, count] whose parent's data the child must not keep.
        var discard: [(first: Int, count: Int)]
    }

    /// By mapping start.
    var mappings: [UInt64: Plan]

    /// Nil when the child shares no page with its parent.
    init?(child: ProcessState, parent: ProcessState) {
        var plans: [UInt64: Plan] = [:]
        for m in child.mappings {
            guard let pm = parent.mappings.first(where: { m.canShareCopyOnWrite(with: $0) }) else { continue }
            let mine = m.pageData(), theirs = pm.pageData()
            var own = [(source: UInt32, offset: UInt64)?](repeating: nil, count: mine.count)
            var discard: [(first: Int, count: Int)] = []
            var shares = false
            for i in 0..<mine.count {
                switch (mine[i], theirs[i]) {
                case let (a?, b?) where a == b: shares = true
                case (nil, nil): break
                case let (a?, _): own[i] = a
                case (nil, _?):
                    if let last = discard.last, last.first + last.count == i { discard[discard.count - 1].count += 1 } else { discard.append((i, 1)) }
                }
            }
            if shares { plans[m.start] = Plan(write: Mapping.runs(from: own), discard: discard) }
        }
        if plans.isEmpty { return nil }
        mappings = plans
    }
}
