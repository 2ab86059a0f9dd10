/// The dynamic loader's list of loaded objects (struct link_map, reached through the
/// executable's DT_DEBUG entry and struct r_debug), read from a process's memory. Its names
/// are the paths the loader used (/lib/x86_64-linux-gnu/libc.so.6), which is what debuggers
/// look up, while /proc/PID/maps shows the resolved files.
public enum LinkMap {
    public struct Entry: Sendable, Equatable {
        /// The name the loader recorded (empty for the executable).
        public var name: String
        /// The load bias (l_addr).
        public var base: UInt64
        /// Address of the object's dynamic section (l_ld).
        public var dynamic: UInt64
        /// Address of the link_map structure itself.
        public var address: UInt64
    }

    /// Reads the list through `word` (64-bit reads) and `string` (C strings) given the
    /// process's auxiliary vector. Returns nil when there is no dynamic loader state.
    public static func read(auxv: [UInt64], word: (UInt64) -> UInt64?, string: (UInt64) -> String?) -> (rDebug: UInt64, entries: [Entry])? {
        var phdr: UInt64 = 0, phnum: UInt64 = 0
        var i = 0
        while i + 1 < auxv.count {
            if auxv[i] == 3 { phdr = auxv[i + 1] }
            if auxv[i] == 5 { phnum = auxv[i + 1] }
            i += 2
        }
        // The words come from the process's memory, which it controls: all address
        // arithmetic wraps instead of trapping, and reads outside its mappings fail.
        guard phdr != 0, phnum > 0, phnum < 256 else { return nil }
        // Program headers: find PT_PHDR (for the load bias) and PT_DYNAMIC.
        var bias: UInt64 = 0, dynamic: UInt64 = 0
        for n in 0..<phnum {
            let at = phdr &+ n &* 56
            guard let typeFlags = word(at), let vaddr = word(at &+ 16) else { return nil }
            let type = typeFlags & 0xFFFF_FFFF
            if type == 6 { bias = phdr &- vaddr }           // PT_PHDR
            if type == 2 { dynamic = vaddr }                // PT_DYNAMIC
        }
        guard dynamic != 0 else { return nil }
        dynamic = dynamic &+ bias
        var rDebug: UInt64 = 0
        for n in 0..<UInt64(512) {
            guard let tag = word(dynamic &+ n &* 16), let value = word(dynamic &+ n &* 16 &+ 8) else { break }
            if tag == 0 { break }
            if tag == 21 { rDebug = value; break }          // DT_DEBUG
        }
        guard rDebug != 0, var map = word(rDebug &+ 8) else { return nil }
        var entries: [Entry] = []
        while map != 0 && entries.count < 4096 {
            guard let base = word(map), let namePtr = word(map &+ 8), let ld = word(map &+ 16), let next = word(map &+ 24) else { break }
            entries.append(Entry(name: namePtr == 0 ? "" : (string(namePtr) ?? ""), base: base, dynamic: ld, address: map))
            map = next
        }
        return (rDebug, entries)
    }
}

extension ImageMemory {
    /// A NUL-terminated string at `address` (up to 4 KiB).
    public func string(_ address: UInt64) -> String? {
        var out: [UInt8] = []
        var at = address
        while out.count < 4096 {
            let chunk = Int(4096 - at % 4096)
            guard let bytes = read(at, count: min(chunk, 256)) else { return nil }
            if let nul = bytes.firstIndex(of: 0) { out += bytes[..<nul]; return String(decoding: out, as: UTF8.self) }
            out += bytes
            at &+= UInt64(bytes.count)
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The loader's link_map list as the image holds it.
    public func linkMap() -> [LinkMap.Entry] {
        LinkMap.read(auxv: image.process.mm.auxv, word: { self.readWord($0) }, string: { self.string($0) })?.entries ?? []
    }
}
