import WBSystem

/// How the explorer picks the next delivery, run after run.
///
/// A run starts from the set's snapshot; at each step the members wait and some messages are
/// deliverable (the oldest pending one of each direction). A strategy picks one; after the
/// run it says whether there is another run worth making.
public enum StrategyKind: String, CaseIterable, Sendable {
    /// Depth-first over delivery orders with dynamic partial-order reduction and sleep sets.
    case dpor
    /// Every order, depth-first, without reduction (to measure what the reduction saves).
    case all
    /// A uniformly random deliverable message at each step.
    case random
    /// Probabilistic concurrency testing: random priorities per direction, changed at
    /// `bugDepth - 1` random steps.
    case pct
}

/// A deliverable message (or a fault) as a strategy sees it.
public struct Choice: Sendable {
    public var id: MessageID
    /// The member it goes to: deliveries to different members commute. -1 for a fault,
    /// which depends on everything.
    public var receiver: Int
}

/// Whether two steps to these receivers may not be swapped.
func dependent(_ a: Int, _ b: Int) -> Bool { a == b || a < 0 || b < 0 }

/// A delivery made, for the race analysis of DPOR.
public struct Step: Sendable {
    public var id: MessageID
    public var receiver: Int
    /// The step during which the message was written (nil: before the first delivery).
    public var cause: Int?
}

public protocol Strategy {
    /// Prepares the next run; false when the search is over (every order explored).
    mutating func beginRun(_ run: Int) -> Bool
    /// The delivery for step `step` among `enabled` (never empty); nil ends the run here
    /// (every choice would repeat an order explored already).
    mutating func choose(step: Int, enabled: [Choice]) -> MessageID?
    /// After a delivery: the run's steps so far (the last one just made).
    mutating func delivered(_ steps: [Step])
    /// The run ended after `steps`, with `pending` still deliverable (the oldest message of
    /// each direction): at the depth bound, at a violation, or with nothing new to try.
    mutating func endRun(_ steps: [Step], pending: [Step])
    /// Branches not explored because the reduction showed them equivalent to explored ones.
    var pruned: Int { get }
    /// The first step of this run whose state no earlier run reached by the same way (the
    /// steps before replay the way to the branch being explored); Int.max when runs do not
    /// replay a search (random, pct), whose states may not end a run for having been seen.
    var freshFrom: Int { get }
}

/// Depth-first search over delivery orders, re-running from the snapshot for each one
/// (stateless, as model checkers of real programs do). With reduction: dynamic partial-order
/// reduction (Flanagan and Godefroid) with sleep sets, where two deliveries depend on each
/// other exactly when they go to the same member: a race between two such deliveries, the
/// earlier not causally before the later's message was written, adds the reversed order as a
/// branch; every other order is equivalent to one explored and is skipped.
public struct DepthFirst: Strategy {
    struct Node {
        var enabled: [Choice]
        var sleep: Set<MessageID>
        var done: Set<MessageID> = []
        var backtrack: Set<MessageID> = []
        var chosen: MessageID?
        var chosenReceiver = -1
    }

    let reduce: Bool
    private var stack: [Node] = []
    /// Happens-before: for each step of the current run, the earlier steps before it.
    private var before: [Set<Int>] = []
    private var started = false
    public private(set) var pruned = 0

    public init(reduce: Bool) { self.reduce = reduce }

    /// The state after the node whose choice this run changed is the first new one.
    public private(set) var freshFrom = 0

    public mutating func beginRun(_ run: Int) -> Bool {
        before = []
        if !started { started = true; return true }
        defer { freshFrom = stack.count }
        // Back to the deepest node with a branch left.
        while let last = stack.last {
            let open = reduce ? last.backtrack.subtracting(last.done).subtracting(last.sleep)
                              : Set(last.enabled.map(\.id)).subtracting(last.done)
            if let next = last.enabled.first(where: { open.contains($0.id) }) {
                stack[stack.count - 1].chosen = next.id
                stack[stack.count - 1].chosenReceiver = next.receiver
                stack[stack.count - 1].done.insert(next.id)
                return true
            }
            if reduce { pruned += Set(last.enabled.map(\.id)).subtracting(last.done).count }
            stack.removeLast()
        }
        return false
    }

    public mutating func choose(step: Int, enabled: [Choice]) -> MessageID? {
        if step < stack.count {
            // Replaying the way to the branch being explored.
            return stack[step].chosen
        }
        var sleep = Set<MessageID>()
        if reduce, let parent = stack.last, let chosen = parent.chosen {
            let receiverOf = Dictionary(parent.enabled.map { ($0.id, $0.receiver) }, uniquingKeysWith: { a, _ in a })
            for id in parent.sleep.union(parent.done) where id != chosen {
                if let r = receiverOf[id], !dependent(r, parent.chosenReceiver) { sleep.insert(id) }
            }
        }
        var node = Node(enabled: enabled, sleep: sleep)
        guard let pick = enabled.first(where: { !sleep.contains($0.id) }) else {
            // Every deliverable message would lead to an order explored already.
            pruned += enabled.count
            return nil
        }
        node.chosen = pick.id
        node.chosenReceiver = pick.receiver
        node.done = [pick.id]
        node.backtrack = [pick.id]
        stack.append(node)
        return pick.id
    }

    public mutating func delivered(_ steps: [Step]) {
        let i = steps.count - 1
        let e = steps[i]
        // What happens before step i: the previous delivery to the same member, the step
        // that wrote the message, and everything before those.
        var hb = Set<Int>()
        if let p = (0..<i).last(where: { dependent(steps[$0].receiver, e.receiver) }) { hb.insert(p); hb.formUnion(before[p]) }
        if let c = e.cause, c < i { hb.insert(c); hb.formUnion(before[c]) }
        before.append(hb)
        if reduce { race(e, after: Array(steps[..<i])) }
    }

    /// The last delivery in `steps` to the same member as `e` that did not lead to `e`'s
    /// message being written races with it: `e`'s direction is tried first there.
    private mutating func race(_ e: Step, after steps: [Step]) {
        let sentAfter: Set<Int> = e.cause.map { before[$0].union([$0]) } ?? []
        guard let j = steps.indices.last(where: { dependent(steps[$0].receiver, e.receiver) }), !sentAfter.contains(j), j < stack.count else { return }
        if let head = stack[j].enabled.first(where: { e.id.isFault ? $0.id == e.id : $0.id.direction == e.id.direction && !$0.id.isFault }) {
            stack[j].backtrack.insert(head.id)
        } else {
            stack[j].backtrack.formUnion(stack[j].enabled.map(\.id))
        }
    }

    public mutating func endRun(_ steps: [Step], pending: [Step]) {
        // Nodes past where the run stopped were never reached.
        if stack.count > steps.count { stack.removeLast(stack.count - steps.count) }
        // The messages the run left undelivered race as if they came next: without this, a
        // run cut by the depth bound (or a violation) would hide the orders that deliver one
        // of them earlier.
        if reduce { for e in pending { race(e, after: steps) } }
    }
}

/// A random deliverable message at every step, from a seeded generator.
public struct RandomWalk: Strategy {
    private var generator: SplitMix64
    public var pruned: Int { 0 }
    public var freshFrom: Int { .max }
    public init(seed: UInt64) { generator = SplitMix64(seed: seed) }
    public mutating func beginRun(_ run: Int) -> Bool { true }
    public mutating func choose(step: Int, enabled: [Choice]) -> MessageID? { enabled.randomElement(using: &generator)?.id }
    public mutating func delivered(_ steps: [Step]) {}
    public mutating func endRun(_ steps: [Step], pending: [Step]) {}
}

/// Probabilistic concurrency testing (Burckhardt et al.), with directions of channels as
/// its threads: each direction gets a random priority when its first message is seen, the
/// highest deliverable one goes, and at `bugDepth - 1` random steps the direction just
/// chosen drops below every other. A bug that needs `bugDepth` orderings is found with
/// probability at least 1/(n k^(d-1)) per run.
public struct PCT: Strategy {
    private var generator: SplitMix64
    let bugDepth: Int
    let steps: Int
    private var priority: [Direction: Double] = [:]
    private var changes: Set<Int> = []
    private var low = 0.0
    public var pruned: Int { 0 }
    public var freshFrom: Int { .max }

    public init(seed: UInt64, bugDepth: Int, steps: Int) {
        generator = SplitMix64(seed: seed)
        self.bugDepth = max(1, bugDepth)
        self.steps = max(1, steps)
    }

    public mutating func beginRun(_ run: Int) -> Bool {
        priority = [:]
        low = 0
        changes = []
        while changes.count < min(bugDepth - 1, steps) { changes.insert(Int.random(in: 0..<steps, using: &generator)) }
        return true
    }

    public mutating func choose(step: Int, enabled: [Choice]) -> MessageID? {
        for c in enabled where priority[c.id.direction] == nil {
            priority[c.id.direction] = Double.random(in: 1..<2, using: &generator)
        }
        guard let pick = enabled.max(by: { priority[$0.id.direction]! < priority[$1.id.direction]! }) else { return nil }
        if changes.contains(step) {
            low -= 1
            priority[pick.id.direction] = low
        }
        return pick.id
    }

    public mutating func delivered(_ steps: [Step]) {}
    public mutating func endRun(_ steps: [Step], pending: [Step]) {}
}
