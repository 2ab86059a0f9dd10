import Foundation
import WBTrace

extension Checkpointer {
    /// The System V semaphore sets and message queues the first preflight found the process
    /// was the last to use, read from wb's side while it is stopped: semctl(IPC_STAT, GETALL),
    /// msgctl(IPC_STAT) and a copy of every queued message (msgrcv MSG_COPY, which leaves
    /// them queued). A queue left out by --allow-unsupported stays out; one removed since
    /// the preflight is left out with a note. Semaphore undo adjustments (SEM_UNDO) are not
    /// saved: the kernel shows them nowhere (docs/image-format.md).
    func captureIPC(into p: inout ProcessState) throws {
        let used = ipcObjects
        guard !used.semaphores.isEmpty || !used.queues.isEmpty else { return }
        var sets: [SysVSemaphoreSet] = [], queues: [SysVMessageQueue] = []
        for o in used.semaphores {
            do {
                sets.append(try SysVIPC.semaphoreSet(o.id))
            } catch where SysVIPC.isGone(error) {
                notes.append("System V semaphore set \(o.id) (key \(Checkpointer.ipcKey(o.key))) was removed during the checkpoint and is not in the image")
            }
        }
        let unreadable = Set(unreadableQueues.map(\.id))
        let largest = SysVIPC.largestMessage
        for o in used.queues where !unreadable.contains(o.id) {
            do {
                queues.append(try SysVIPC.messageQueue(o.id, largest: largest))
            } catch where SysVIPC.isGone(error) {
                notes.append("System V message queue \(o.id) (key \(Checkpointer.ipcKey(o.key))) was removed during the checkpoint and is not in the image")
            }
        }
        p.sysvSemaphores = sets.isEmpty ? nil : sets
        p.sysvQueues = queues.isEmpty ? nil : queues
    }
}
