import Foundation
import Glibc
import WBTrace

/// Rebuilds the image's memory inside the stub: find a hole for wb's scratch area, clear out
/// the stub's own mappings, move the vdso and vvar onto the image's addresses, map every VMA,
/// copy the stored pages in, then apply final protections and advice.
struct AddressSpace {
    let restorer: Restorer
    let tracee: Tracee
    var leader: RemoteSyscalls
    let files: ResolvedFiles
    var scratch: Scratch!
    /// fds inside the process for files being mapped, closed when memory is done.
    private var mappedFDs: [String: Int32] = [:]
    /// Shared objects (memfds, deleted files mapped shared) by content hash, left open for
    /// the fd restore to share.
    var sharedObjects: [ContentHash: Int32] = [:]

    var image: Image { restorer.image }
    var mappings: [Mapping] { image.process.mappings }

    init(restorer: Restorer, tracee: Tracee, leader: RemoteSyscalls, files: ResolvedFiles) throws {
        self.restorer = restorer
        self.tracee = tracee
        self.leader = leader
        self.files = files
    }

    mutating func build() throws {
        let stubMaps = try ProcFS.maps(tracee.pid, withFlags: false)
        let hole = try findHole(bytes: 4 << 20, avoiding: stubMaps)
        let base = try leader.mapScratch(bytes: Scratch.bytes, at: hole, executable: true)
        try tracee.write([0x0F, 0x05, 0xCC], to: base)
        tracee.syscallGadget = base
        scratch = Scratch(tracee: tracee, base: base)
        for e in stubMaps where !e.path.hasPrefix("[vdso") && !e.path.hasPrefix("[vvar") && e.path != "[vsyscall]" {
            try leader.call(.munmap, e.start, e.end - e.start, what: "clearing the stub's mapping \(e.path)")
        }
        try placeVdso(stubMaps, temporary: hole + (1 << 20))
        for m in mappings { try map(m) }
        try copyPages()
        for m in mappings { try finish(m) }
        for (_, fd) in mappedFDs { _ = try leader.raw(.close, UInt64(fd)) }
        mappedFDs = [:]
    }

    /// A free range of `bytes` that overlaps neither the image's mappings nor the stub's.
    private func findHole(bytes: UInt64, avoiding stub: [ProcFS.MapsEntry]) throws -> UInt64 {
        var used = mappings.map { ($0.start, $0.end) } + stub.map { ($0.start, $0.end) }
        used.sort { $0.0 < $1.0 }
        var candidate: UInt64 = 0x1_0000_0000
        for (s, e) in used {
            if e <= candidate { continue }
            if s >= candidate + bytes { break }
            candidate = (e + 0xFFFFF) & ~0xFFFFF
        }
        guard candidate + bytes < 0x7FFF_FFFF_0000 else {
            throw WBError.failed("no free address range for wb's work area in this process's address space")
        }
        return candidate
    }

    /// Moves this kernel's vdso and vvar to where the image had them. Same kernel, same
    /// sizes: the process's own pointers into the vdso stay valid.
    private mutating func placeVdso(_ stub: [ProcFS.MapsEntry], temporary: UInt64) throws {
        let kinds: [(String, Mapping.Kind)] = [("[vvar]", .vvar), ("[vvar_vclock]", .vvarVclock), ("[vdso]", .vdso)]
        var moves: [(from: ProcFS.MapsEntry, to: UInt64)] = []
        for (name, kind) in kinds {
            let here = stub.first { $0.path == name }
            let there = mappings.first { $0.kind == kind }
            switch (here, there) {
            case let (h?, t?):
                guard h.end - h.start == t.size else {
                    throw WBError.refused("this kernel's \(name) is \(h.end - h.start) bytes but the image's was \(t.size): restoring across kernels with a different vdso layout is not supported yet")
                }
                moves.append((h, t.start))
            case let (h?, nil):
                try leader.call(.munmap, h.start, h.end - h.start, what: "removing \(name), which the image's process did not have")
            case (nil, _?):
                throw WBError.refused("the image's process had \(name) but this kernel provides none")
            case (nil, nil):
                break
            }
        }
        // Through a temporary place first, so no move lands on a mapping not yet moved.
        var staged: [(UInt64, UInt64, UInt64)] = []
        var at = temporary
        for mv in moves {
            let size = mv.from.end - mv.from.start
            try leader.call(.mremap, mv.from.start, size, size, 3 /* MAYMOVE|FIXED */, at, what: "moving \(mv.from.path)")
            staged.append((at, size, mv.to))
            at += size
        }
        for (from, size, to) in staged {
            try leader.call(.mremap, from, size, size, 3, to, what: "placing the vdso at \(hex(to))")
        }
    }

    /// The fd inside the process for a mapped file (opened once per file).
    private mutating func fd(for m: Mapping) throws -> Int32 {
        guard let id = m.file, let path = files.path(for: id) else {
            throw WBError.failed("no file to map at \(hex(m.start)) (\(m.path ?? "?"))")
        }
        let writable = m.shared && m.protection & 2 != 0
        let key = "\(path)|\(writable)"
        if let fd = mappedFDs[key] { return fd }
        scratch.reset()
        let name = try scratch.put(string: path)
        let flags = UInt64(writable ? O_RDWR : O_RDONLY) | UInt64(O_CLOEXEC)
        let fd = Int32(try leader.call(.openat, UInt64(bitPattern: -100), name, flags, 0, what: "opening \(path) to map it"))
        mappedFDs[key] = fd
        return fd
    }

    /// A memfd holding a shared deleted file's contents (the process's own shared memory).
    private mutating func sharedObject(for m: Mapping) throws -> Int32 {
        guard let hash = m.file?.content, let file = image.metadata.file(hash) else {
            throw WBError.failed("the image lacks the contents of shared mapping \(m.path ?? "?") at \(hex(m.start))")
        }
        if let fd = sharedObjects[hash] { return fd }
        scratch.reset()
        let rawName = m.path.map { $0.hasPrefix("/memfd:") ? String($0.dropFirst(7)) : ($0.split(separator: "/").last.map(String.init) ?? "wb") } ?? "wb"
        let name = try scratch.put(string: String(rawName.prefix(200)))
        let fd = Int32(try leader.call(.memfdCreate, name, 1 /* MFD_CLOEXEC */, what: "creating shared memory for \(m.path ?? "?")"))
        let out = try FileDescriptor.open("/proc/\(tracee.pid)/fd/\(fd)", O_RDWR, what: "filling shared memory \(m.path ?? "?")")
        try image.contents(of: file).withBytes { try out.write($0, at: 0) }
        sharedObjects[hash] = fd
        return fd
    }

    private mutating func map(_ m: Mapping) throws {
        let MAP_SHARED: UInt64 = 0x01, MAP_PRIVATE: UInt64 = 0x02, MAP_FIXED: UInt64 = 0x10
        let MAP_ANONYMOUS: UInt64 = 0x20, MAP_GROWSDOWN: UInt64 = 0x100, MAP_NORESERVE: UInt64 = 0x4000
        var flags = MAP_FIXED | (m.shared ? MAP_SHARED : MAP_PRIVATE)
        if m.vmFlags.contains("gd") { flags |= MAP_GROWSDOWN }
        if m.vmFlags.contains("nr") { flags |= MAP_NORESERVE }
        var prot: UInt64 = 3   // written first, protected at the end
        var fd: Int32 = -1
        var offset: UInt64 = 0
        switch m.kind {
        case .vdso, .vvar, .vvarVclock, .vsyscall:
            return
        case .anonymous, .heap, .stack, .sharedAnonymous:
            flags |= MAP_ANONYMOUS
        case .file:
            if m.shared && m.deleted {
                fd = try sharedObject(for: m)
            } else {
                fd = try self.fd(for: m)
            }
            offset = m.offset
            if m.shared { prot = UInt64(m.protection) }
        }
        let what = "mapping \(hex(m.start))-\(hex(m.end)) \(m.path ?? m.kind.rawValue)"
        let got = try leader.call(.mmap, m.start, m.size, prot, flags, UInt64(bitPattern: Int64(fd)), offset, what: what)
        guard got == m.start else { throw WBError.failed("\(what): the kernel placed it at \(hex(got))") }
    }

    /// Copies every stored page into place, one process_vm_writev batch per mapping.
    private func copyPages() throws {
        let pages = image.header.section(.pages)!
        guard pages.length > 0 else { return }
        let region = try image.map(.pages, offset: 0, length: pages.length)
        for m in mappings where !m.pages.isEmpty && m.kind != .vdso {
            var i = 0
            while i < m.pages.count {
                // Runs whose data lie back to back in the image go out in one call.
                var j = i
                while j + 1 < m.pages.count && m.pages[j + 1].dataOffset == m.pages[j].dataOffset + m.pages[j].byteCount { j += 1 }
                var ranges: [UInt64] = []
                for r in m.pages[i...j] { ranges += [m.start + UInt64(r.page) * 4096, r.byteCount] }
                let from = Int(m.pages[i].dataOffset)
                let to = Int(m.pages[j].dataOffset + m.pages[j].byteCount)
                try withContext("copying memory into \(hex(m.start))-\(hex(m.end))") {
                    try region.withBytes { try tracee.write(ranges: ranges, from: UnsafeRawBufferPointer(rebasing: $0[from..<to])) }
                }
                i = j + 1
            }
        }
    }

    /// Final protection, madvise flags and anonymous VMA names.
    private func finish(_ m: Mapping) throws {
        switch m.kind {
        case .vdso, .vvar, .vvarVclock, .vsyscall: return
        default: break
        }
        let what = "\(hex(m.start))-\(hex(m.end))"
        if !(m.kind == .file && m.shared) && m.protection != 3 {
            try leader.call(.mprotect, m.start, m.size, UInt64(m.protection), what: "protecting \(what)")
        }
        let advice: [(String, UInt64)] = [("dc", 10), ("wf", 18), ("hg", 14), ("nh", 15), ("dd", 16)]
        for (flag, adv) in advice where m.vmFlags.contains(flag) {
            _ = try leader.raw(.madvise, m.start, m.size, adv)
        }
        if let name = m.anonName {
            scratch.reset()
            let n = try scratch.put(string: name)
            _ = try leader.raw(.prctl, 0x53564d41 /* PR_SET_VMA */, 0 /* ANON_NAME */, m.start, m.size, n)
        }
    }
}
