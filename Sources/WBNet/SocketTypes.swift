import Glibc

/// Socket types as plain ints (Glibc imports them as an enum).
let stream = Int32(SOCK_STREAM.rawValue), dgram = Int32(SOCK_DGRAM.rawValue), seqpacket = Int32(SOCK_SEQPACKET.rawValue), raw = Int32(SOCK_RAW.rawValue)
let cloexec = Int32(SOCK_CLOEXEC.rawValue)
