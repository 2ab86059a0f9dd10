import Foundation

/// A System V semaphore set (semget) the process was the last to use, as semctl(IPC_STAT)
/// and semctl(GETALL) describe it.
public struct SysVSemaphoreSet: Codable, Sendable, Equatable {
    /// The id semget returned (the process may hold it in a variable).
    public var id: Int32
    public var key: Int32
    /// Permission bits (the low 9 bits of sem_perm.mode).
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// The creator's ids (IPC_SET cannot change them: the restored set's are the restorer's).
    public var cuid: UInt32
    public var cgid: UInt32
    /// Each semaphore's value, in order; as many as the set holds.
    public var values: [UInt16]

    public init(id: Int32, key: Int32, mode: UInt32, uid: UInt32, gid: UInt32, cuid: UInt32, cgid: UInt32, values: [UInt16]) {
        self.id = id; self.key = key; self.mode = mode; self.uid = uid; self.gid = gid
        self.cuid = cuid; self.cgid = cgid; self.values = values
    }
}

/// A System V message queue (msgget) the process was the last to send to or receive from,
/// as msgctl(IPC_STAT) describes it, with every message queued, copied with
/// msgrcv(MSG_COPY) (which leaves them queued).
public struct SysVMessageQueue: Codable, Sendable, Equatable {
    public var id: Int32
    public var key: Int32
    /// Permission bits (the low 9 bits of msg_perm.mode).
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var cuid: UInt32
    public var cgid: UInt32
    /// How many bytes the queue may hold (msg_qbytes).
    public var qbytes: UInt64
    /// The messages queued, first to be received first.
    public var messages: [SysVMessage]

    public init(id: Int32, key: Int32, mode: UInt32, uid: UInt32, gid: UInt32, cuid: UInt32, cgid: UInt32,
                qbytes: UInt64, messages: [SysVMessage]) {
        self.id = id; self.key = key; self.mode = mode; self.uid = uid; self.gid = gid
        self.cuid = cuid; self.cgid = cgid; self.qbytes = qbytes; self.messages = messages
    }
}

/// One queued message: its type (mtype, above 0) and its bytes.
public struct SysVMessage: Codable, Sendable, Equatable {
    public var type: Int64
    public var bytes: Data
    public init(type: Int64, bytes: Data) { self.type = type; self.bytes = bytes }
}
