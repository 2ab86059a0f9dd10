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
    /// Opens the files the image names with the process's privilege, not wb's.
    var access: FileAccess!
    /// fds inside the process for files being mapped, closed when memory is done.
    private var mappedFDs: [String: Int32] = [:]
    /// Shared objects (memfds, deleted files mapped shared) by `SharedObjects.fileKey`, left
    /// open for the fd restore to share.
    var sharedObjects: [String: Int32] = [:]

    let process: ProcessState
    let shared: SharedObjects
    /// For a child forked from its rebuilt parent: the mappings it keeps from the fork, with
    /// the pages it writes and discards in them.
    let inherited: InheritedMemory?

    var image: Image { restorer.image }
    var mappings: [Mapping] { process.mappings }

    init(restorer: Restorer, process: ProcessState, tracee: Tracee, leader: RemoteSyscalls, files: ResolvedFiles,
         shared: SharedObjects, inherited: InheritedMemory? = nil) throws {
        self.restorer = restorer
        self.process = process
        self.shared = shared
        self.inherited = inherited
        self.tracee = tracee
        self.leader = leader
        self.files = files
    }

    /// Every VMA mapped writable, with its pages in (`finishPages` protects them): what a
    /// child forked now inherits.
    mutating func buildPages() throws {
        let stubMaps = try ProcFS.maps(tracee.pid, withFlags: false)
        let hole = try findHole(bytes: 4 << 20, avoiding: stubMaps)
        let base = try leader.mapScratch(bytes: Scratch.bytes, at: hole, executable: true)
        try tracee.write([0x0F, 0x05, 0xCC], to: base)
        try tracee.write(Scratch.forkCode, to: base + Scratch.forkCodeOffset)
        try tracee.write(RemoteSyscalls.batchCode, to: base + Scratch.batchCodeOffset)
        tracee.syscallGadget = base
        scratch = Scratch(tracee: tracee, base: base)
        access = try FileAccess(process: process, tracee: tracee, leader: leader, scratch: scratch,
                                cacheDirectory: restorer.options.cacheDirectory)
        // What a child forked from its rebuilt parent keeps of the parent's mappings stays.
        let kept = mappings.filter { inherited?.mappings[$0.start] != nil }.map { PageScanner.Range(start: $0.start, end: $0.end, file: false, written: false) }
        for e in stubMaps where !e.path.hasPrefix("[vdso") && !e.path.hasPrefix("[vvar") && e.path != "[vsyscall]" {
            for r in PageScanner.subtracting(kept, from: [PageScanner.Range(start: e.start, end: e.end, file: false, written: false)]) {
                try leader.call(.munmap, r.start, r.end - r.start, what: "clearing the stub's mapping \(e.path)")
            }
        }
        try placeVdso(stubMaps, temporary: hole + (1 << 20))
        for m in mappings where inherited?.mappings[m.start] == nil { try map(m) }
        for (start, plan) in inherited?.mappings ?? [:] {
            for d in plan.discard {
                try leader.call(.madvise, start + UInt64(d.first) * 4096, UInt64(d.count) * 4096, 4 /* MADV_DONTNEED */,
                                what: "dropping the parent's pages at \(hex(start + UInt64(d.first) * 4096))")
            }
        }
        if restorer.options.mapPages { try mapPagesFromImage() }
        try copyPages()
    }

    /// Final protections and advice; closes the files mapped.
    mutating func finishPages() throws {
        for m in mappings { try finish(m) }
        for (_, fd) in mappedFDs { _ = try leader.raw(.close, UInt64(fd)) }
        mappedFDs = [:]
    }

    /// A free range of `bytes` that overlaps neither the image's mappings nor the stub's.
    private func findHole(bytes: UInt64, avoiding stub: [ProcFS.MapsEntry], also: [(UInt64, UInt64)] = []) throws -> UInt64 {
        var used = mappings.map { ($0.start, $0.end) } + stub.map { ($0.start, $0.end) } + also
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

    /// Puts this kernel's vdso where the process will find it. When its entry points sit at
    /// the same offsets as in the image's vdso (same kernel), this kernel's [vvar],
    /// [vvar_vclock] and [vdso] are moved onto the image's addresses. Otherwise they are moved
    /// to a free place, and the image's own vdso is put back at its address with every entry
    /// point redirected to the same function of the new one, so the addresses the process
    /// resolved at start-up keep working. WB_RESTORE_VDSO=redirect forces the second way.
    private mutating func placeVdso(_ stub: [ProcFS.MapsEntry], temporary: UInt64) throws {
        let kinds: [(String, Mapping.Kind)] = [("[vvar]", .vvar), ("[vvar_vclock]", .vvarVclock), ("[vdso]", .vdso)]
        let here = kinds.compactMap { k in stub.first { $0.path == k.0 }.map { (k.1, $0) } }
        let there = kinds.compactMap { k in mappings.first { $0.kind == k.1 }.map { (k.1, $0) } }
        guard let imageVdso = there.first(where: { $0.0 == .vdso })?.1 else {
            for (_, h) in here {
                try leader.call(.munmap, h.start, h.end - h.start, what: "removing \(h.path), which the image's process did not have")
            }
            return
        }
        guard let hostVdso = here.first(where: { $0.0 == .vdso })?.1 else {
            throw WBError.refused("the image's process had a vdso but this kernel provides none")
        }
        let hostBytes = try tracee.read(hostVdso.start, count: Int(hostVdso.end - hostVdso.start))
        let imageBytes = try storedBytes(of: imageVdso)
        let hostSymbols = ELFSymbols.functions(in: hostBytes) ?? [:]
        let imageSymbols = imageBytes.flatMap { ELFSymbols.functions(in: $0) }
        let sameLayout = here.count == there.count
            && zip(here, there).allSatisfy { $0.1.end - $0.1.start == $1.1.size && $0.0 == $1.0 }
            && imageSymbols == hostSymbols
        let forced = ProcessInfo.processInfo.environment["WB_RESTORE_VDSO"] == "redirect"
        if sameLayout && !forced {
            try move(here.map { h in (h.1, there.first { t in t.0 == h.0 }!.1.start) }, via: temporary)
            return
        }
        guard let imageBytes, let imageSymbols else {
            throw WBError.refused("the image does not hold its vdso's code, and this kernel's vdso differs: the process cannot be given its vdso back")
        }
        // This kernel's vdso goes to a free place, its pieces kept in their order.
        let span = (here.last!.1.end) - (here.first!.1.start)
        let base = try findHole(bytes: span + (1 << 20), avoiding: stub, also: [(scratch.base, scratch.base + scratch.size), (temporary, temporary + (1 << 20))])
        try move(here.map { ($0.1, base + ($0.1.start - here.first!.1.start)) }, via: temporary)
        let newVdso = base + (hostVdso.start - here.first!.1.start)
        // The image's vdso comes back at its address, every entry point a jump into the new one.
        var code = imageBytes
        var patched = Set<UInt64>()
        for (name, offset) in imageSymbols.sorted(by: { $0.key < $1.key }) where !patched.contains(offset) {
            guard Int(offset) + 12 <= code.count else { continue }
            patched.insert(offset)
            var stub: [UInt8]
            if let target = hostSymbols[name] ?? hostSymbols[name.hasPrefix("__vdso_") ? String(name.dropFirst(7)) : "__vdso_" + name] {
                stub = [0x48, 0xB8] + withUnsafeBytes(of: (newVdso + target).littleEndian) { Array($0) } + [0xFF, 0xE0]   // movabs rax; jmp rax
            } else if let nr = AddressSpace.vdsoSyscalls[name.hasPrefix("__vdso_") ? String(name.dropFirst(7)) : name] {
                stub = [0xB8] + withUnsafeBytes(of: UInt32(nr).littleEndian) { Array($0) } + [0x0F, 0x05, 0xC3]   // mov eax; syscall; ret
            } else {
                continue
            }
            code.replaceSubrange(Int(offset)..<(Int(offset) + stub.count), with: stub)
        }
        let size = imageVdso.size
        try leader.call(.mmap, imageVdso.start, size, 3, 0x32 /* PRIVATE|FIXED|ANONYMOUS */, UInt64.max, 0,
                        what: "mapping the image's vdso at \(hex(imageVdso.start))")
        try tracee.write(code, to: imageVdso.start)
        try leader.call(.mprotect, imageVdso.start, size, 5, what: "protecting the redirected vdso")
        restorer.note("this kernel's vdso differs from the image's: its entry points at \(hex(imageVdso.start)) now jump to the vdso at \(hex(newVdso))", about: process)
    }

    /// System calls that stand in for vdso functions this kernel does not offer.
    static let vdsoSyscalls: [String: Int] = ["clock_gettime": 228, "gettimeofday": 96, "time": 201,
                                              "getcpu": 309, "clock_getres": 229]

    /// Moves special mappings through a temporary place, so no move lands on one not yet moved.
    private func move(_ moves: [(ProcFS.MapsEntry, UInt64)], via temporary: UInt64) throws {
        var staged: [(UInt64, UInt64, UInt64)] = []
        var at = temporary
        for (from, to) in moves {
            let size = from.end - from.start
            try leader.call(.mremap, from.start, size, size, 3 /* MAYMOVE|FIXED */, at, what: "moving \(from.path)")
            staged.append((at, size, to))
            at += size
        }
        for (from, size, to) in staged {
            try leader.call(.mremap, from, size, size, 3, to, what: "placing the vdso at \(hex(to))")
        }
    }

    /// The bytes the image stores for a mapping, if it stores all of them.
    private func storedBytes(of m: Mapping) throws -> [UInt8]? {
        guard m.storedPageCount == m.pageCount else { return nil }
        var out = [UInt8](repeating: 0, count: Int(m.size))
        for r in m.pages {
            guard let region = try image.pageRegion(r.source) else { continue }
            region.withBytes { src in
                out.withUnsafeMutableBytes { dst in
                    dst.baseAddress!.advanced(by: Int(r.page) * 4096).copyMemory(from: src.baseAddress! + Int(r.dataOffset), byteCount: Int(r.byteCount))
                }
            }
        }
        return out
    }

    /// The fd inside the process for a mapped file (opened once per file).
    private mutating func fd(for m: Mapping) throws -> Int32 {
        guard let id = m.file, let path = files.path(for: id) else {
            throw WBError.failed("no file to map at \(hex(m.start)) (\(m.path ?? "?"))")
        }
        // A shared mapping of a file opened for writing may be made writable later (VmFlags
        // "mw", may-write), whatever its protection now: mprotect then needs an fd opened so.
        let writable = m.shared && (m.protection & 2 != 0 || m.vmFlags.contains("mw"))
        let key = "\(path)|\(writable)"
        if let fd = mappedFDs[key] { return fd }
        var target = path
        if writable, let copies = restorer.privateCopies {
            // Shared and writable: its writes would reach the file. The run gets a copy.
            target = try copies.make(path)
        }
        scratch.reset()
        let name = try scratch.put(string: target)
        let flags = UInt64(writable ? O_RDWR : O_RDONLY) | UInt64(O_CLOEXEC)
        let fd = Int32(try access.asProcess(path: path) {
            try leader.call(.openat, UInt64(bitPattern: -100), name, flags, 0, what: "opening \(path) to map it")
        })
        mappedFDs[key] = fd
        return fd
    }

    /// A memfd holding a shared deleted file's contents (the process's own shared memory).
    private mutating func sharedObject(for m: Mapping) throws -> Int32 {
        guard let hash = m.file?.content, let file = image.metadata.file(hash) else {
            throw WBError.failed("the image lacks the contents of shared mapping \(m.path ?? "?") at \(hex(m.start))")
        }
        let key = shared.fileKey(of: m, content: hash)
        if let fd = sharedObjects[key] { return fd }
        let base = SharedObjects.base(of: process)
        if let fd = try shared.fetch(key, into: leader, above: base) {
            // Another process of the tree made it.
            sharedObjects[key] = fd
            return fd
        }
        scratch.reset()
        let rawName = m.path.map { $0.hasPrefix("/memfd:") ? String($0.dropFirst(7)) : ($0.split(separator: "/").last.map(String.init) ?? "wb") } ?? "wb"
        let name = try scratch.put(string: String(rawName.prefix(200)))
        let fd = Int32(try leader.call(.memfdCreate, name, 1 /* MFD_CLOEXEC */, what: "creating shared memory for \(m.path ?? "?")"))
        let out = try FileDescriptor.open("/proc/\(tracee.pid)/fd/\(fd)", O_RDWR, what: "filling shared memory \(m.path ?? "?")")
        try image.contents(of: file).withBytes { try out.write($0, at: 0) }
        sharedObjects[key] = fd
        try shared.keep(key, fd: fd, leader: leader, pid: process.pid, above: base)
        return fd
    }

    /// The shared anonymous memory `m` belongs to, when an earlier process of the tree made
    /// it: an fd of it, and the offset to map it at.
    private mutating func sharedMemory(of m: Mapping) throws -> (fd: Int32, offset: UInt64)? {
        guard let object = m.object, let e = shared.entry("memory:\(object)"), m.offset >= e.offset else { return nil }
        guard let fd = try shared.fetch("memory:\(object)", into: leader, above: SharedObjects.base(of: process)) else { return nil }
        return (fd, m.offset - e.offset)
    }

    /// Keeps shared anonymous memory just made for the processes restored after this one.
    private mutating func keepSharedMemory(_ m: Mapping) throws {
        guard shared.tree, let object = m.object, shared.entry("memory:\(object)") == nil else { return }
        scratch.reset()
        let name = try scratch.put(string: "/proc/self/map_files/\(String(m.start, radix: 16))-\(String(m.end, radix: 16))")
        let fd = try leader.raw(.openat, UInt64(bitPattern: -100), name, UInt64(O_RDWR | O_CLOEXEC), 0)
        guard fd >= 0 else {
            restorer.note("shared memory at \(hex(m.start)) could not be opened (\(String(cString: strerror(Int32(-fd))))); other processes of the tree get their own copy", about: process)
            return
        }
        try shared.keep("memory:\(object)", fd: Int32(fd), offset: m.offset, leader: leader, pid: process.pid,
                        above: SharedObjects.base(of: process))
        _ = try leader.raw(.close, UInt64(fd))
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
        case .aioRing:
            try aioContext(m)
            return
        case .sysvShm:
            try attach(m)
            return
        case .anonymous, .heap, .stack:
            flags |= MAP_ANONYMOUS
        case .sharedAnonymous:
            if let (object, at) = try sharedMemory(of: m) {
                fd = object
                offset = at
            } else {
                flags |= MAP_ANONYMOUS
            }
        case .file:
            if m.shared && (m.deleted || m.file.map { files.copied($0) } == true) {
                fd = try sharedObject(for: m)
            } else {
                fd = try self.fd(for: m)
            }
            offset = m.offset
            if m.shared { prot = UInt64(m.protection) }
        }
        let what = "mapping \(hex(m.start))-\(hex(m.end)) \(m.path ?? m.kind.rawValue)"
        if let huge = m.hugePageSize, fd < 0 {
            // Huge pages from the hugetlb pool, of their size (log2 of it in the flags); with
            // too few free here, ordinary pages, noted.
            let hugeFlags = flags | 0x40000 /* MAP_HUGETLB */ | UInt64(huge.trailingZeroBitCount) << 26
            let r = try leader.raw(.mmap, m.start, m.size, prot, hugeFlags, UInt64(bitPattern: -1), 0)
            if r == Int64(m.start) {
                if m.kind == .sharedAnonymous { try keepSharedMemory(m) }
                return
            }
            restorer.note("\(what) was of \(huge >> 20) MiB huge pages (hugetlb); this machine cannot give \(m.size / huge) of them (\(WBError.errnoText(Int32(-r))): see /proc/sys/vm/nr_hugepages), so it has ordinary pages", about: process)
        }
        let got = try leader.call(.mmap, m.start, m.size, prot, flags, UInt64(bitPattern: Int64(fd)), offset, what: what)
        guard got == m.start else { throw WBError.failed("\(what): the kernel placed it at \(hex(got))") }
        if m.kind == .sharedAnonymous {
            if fd >= 0 { _ = try leader.raw(.close, UInt64(fd)) } else { try keepSharedMemory(m) }
        }
    }

    /// Attaches the System V segment `m` shows, making it first if no process has yet. The
    /// segment is attached whole at a free place, the part `m` covers moved onto `m`'s
    /// addresses and the rest detached, unless `m` is the whole segment (attached in place).
    private mutating func attach(_ m: Mapping) throws {
        guard let id = m.shmid, let segment = process.sysvSegments?.first(where: { $0.id == id }) else {
            throw WBError.badImage(path: image.path, problem: "mapping \(hex(m.start)) attaches a System V segment the image does not describe")
        }
        let made = !shared.segments.contains(id)
        if made {
            try make(segment)
            shared.segments.insert(id)
        }
        let size = (segment.size + 4095) & ~4095
        let what = "attaching System V segment \(id) at \(hex(m.start))"
        if m.offset == 0 && m.size == size {
            let got = try leader.call(.shmat, UInt64(UInt32(bitPattern: id)), m.start, 0, what: what)
            guard got == m.start else { throw WBError.failed("\(what): the kernel placed it at \(hex(got))") }
        } else {
            let hole = try findHole(bytes: size, avoiding: try ProcFS.maps(tracee.pid, withFlags: false))
            let at = try leader.call(.shmat, UInt64(UInt32(bitPattern: id)), hole, 0, what: what)
            try leader.call(.mremap, at + m.offset, m.size, m.size, 3 /* MAYMOVE|FIXED */, m.start, what: what)
            try leader.call(.munmap, at, size, what: "detaching the rest of System V segment \(id)")
        }
        // Marked for removal, it is removed once attached (Linux lets the other processes of
        // the tree still attach it by id).
        if made && segment.removed {
            try leader.call(.shmctl, UInt64(UInt32(bitPattern: id)), 0 /* IPC_RMID */, 0, what: "marking System V segment \(id) for removal")
        }
    }

    /// Creates System V segment `s` with its own id (written to shm_next_id, which the next
    /// shmget of this IPC namespace takes), key, size, owner and permissions.
    private mutating func make(_ s: SysVSegment) throws {
        let id = UInt64(UInt32(bitPattern: s.id))
        scratch.reset()
        let sysctl = try scratch.put(string: "/proc/sys/kernel/shm_next_id")
        let text = "\(s.id)"
        let value = try scratch.put(string: text)
        let leader = self.leader
        func nextID() throws {
            let fd = try leader.call(.openat, UInt64(bitPattern: -100), sysctl, UInt64(O_WRONLY | O_CLOEXEC), 0,
                                     what: "opening /proc/sys/kernel/shm_next_id to give System V segment \(s.id) its id")
            let wrote = try leader.raw(.write, fd, value, UInt64(text.utf8.count))
            _ = try leader.raw(.close, fd)
            guard wrote == text.utf8.count else {
                throw WBError.system(call: "remote write(shm_next_id)", errno: Int32(-min(wrote, 0)), what: "giving System V segment \(s.id) its id")
            }
        }
        let create: UInt64 = 0o1000 | 0o2000 | 0o600   // IPC_CREAT | IPC_EXCL
        try nextID()
        var got = try leader.raw(.shmget, UInt64(UInt32(bitPattern: s.key)), s.size, create)
        if got == -Int64(EEXIST) && s.removed {
            // A live segment took its old key; a removed one has no key anyway.
            try nextID()
            got = try leader.raw(.shmget, 0 /* IPC_PRIVATE */, s.size, create)
        }
        guard got >= 0 else {
            throw WBError.system(call: "remote shmget", errno: Int32(-got), what: "making System V segment \(s.id) (key \(String(format: "0x%08x", UInt32(bitPattern: s.key))), \(s.size) bytes)")
        }
        guard UInt64(got) == id else {
            throw WBError.failed("making System V segment \(s.id): the kernel gave it id \(got), so the process would not find it")
        }
        // Owner and permissions (struct shmid64_ds: uid at 4, gid at 8, mode at 20).
        var ds = [UInt8](repeating: 0, count: 112)
        for (at, v) in [(4, s.uid), (8, s.gid), (20, s.mode)] {
            for b in 0..<4 { ds[at + b] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(b))) }
        }
        scratch.reset()
        let buffer = try scratch.put(ds)
        try leader.call(.shmctl, id, 1 /* IPC_SET */, buffer, what: "setting the owner and permissions of System V segment \(s.id)")
        if s.locked {
            let r = try leader.raw(.shmctl, id, 11 /* SHM_LOCK */, 0)
            if r < 0 { restorer.note("System V segment \(s.id) was locked in memory; locking it here failed (\(String(cString: strerror(Int32(-r)))))", about: process) }
        }
    }

    /// Mappings whose stored pages are mapped from the image file with --map: private
    /// anonymous memory that does not grow down. Everything else is copied.
    private func mappedFromImage(_ m: Mapping) -> Bool {
        restorer.options.mapPages && !m.shared && (m.kind == .anonymous || m.kind == .heap) && !m.vmFlags.contains("gd")
    }

    /// Maps each stored run of pages straight from the image, private and copy-on-write:
    /// the page cache holds the data, and nothing is copied until the process writes.
    private mutating func mapPagesFromImage() throws {
        var fds: [UInt32: UInt64] = [:]
        for m in mappings where mappedFromImage(m) {
            for r in m.pages {
                let (file, base) = try image.pageLocation(r.source)
                if fds[r.source] == nil {
                    scratch.reset()
                    let name = try scratch.put(string: file)
                    // The path has no link left in it (pageLocation): openat2 with
                    // RESOLVE_NO_SYMLINKS keeps it so, should one be planted meanwhile.
                    var how: [UInt64] = [UInt64(O_RDONLY | O_CLOEXEC), 0, 0x04 /* RESOLVE_NO_SYMLINKS */]
                    if r.source == 0 { how[2] = 0 }
                    let howAt = try scratch.put(words: how)
                    fds[r.source] = try leader.call(.openat2, UInt64(bitPattern: -100), name, howAt, 24,
                                                    what: "opening \(file) to map its pages")
                }
                let at = m.start + UInt64(r.page) * 4096
                try leader.call(.mmap, at, r.byteCount, 3, 0x12 /* PRIVATE|FIXED */, fds[r.source]!, base + r.dataOffset,
                                what: "mapping page data at \(hex(at)) from \(file)")
            }
        }
        for fd in fds.values { _ = try leader.raw(.close, fd) }
    }

    /// One process_vm_writev of a copy: up to 1 MiB of `source`'s data from `offset` on, to
    /// the address ranges `ranges` (address, length pairs) of the process.
    private struct Slice {
        var mapping: Int
        var source: UInt32
        var offset: Int
        var count: Int
        var ranges: [UInt64]
    }

    /// Copies every stored page into place, 1 MiB of data per process_vm_writev: runs whose
    /// data lie back to back in one source go out together, and each slice is checked
    /// (`Restorer.pageVerifier`) just before it is written, while it is in the CPU's cache.
    /// The slices are shared out between the CPUs (up to 4 copies at once): the page faults
    /// and copies of different pages of one process go on side by side.
    private func copyPages() throws {
        let size = 1 << 20
        var slices: [Slice] = []
        for (mi, m) in mappings.enumerated() where !m.pages.isEmpty && m.kind != .vdso && !mappedFromImage(m) {
            // A mapping kept from the parent gets only the pages the child holds differently.
            let pages = inherited?.mappings[m.start]?.write ?? m.pages
            var i = 0
            while i < pages.count {
                var j = i
                while j + 1 < pages.count && pages[j + 1].source == pages[i].source
                        && pages[j + 1].dataOffset == pages[j].dataOffset + pages[j].byteCount { j += 1 }
                var slice = Slice(mapping: mi, source: pages[i].source, offset: Int(pages[i].dataOffset), count: 0, ranges: [])
                for r in pages[i...j] {
                    var remote = m.start + UInt64(r.page) * 4096
                    var left = Int(r.byteCount)
                    while left > 0 {
                        let n = min(left, size - slice.count)
                        slice.ranges += [remote, UInt64(n)]
                        slice.count += n
                        remote += UInt64(n)
                        left -= n
                        if slice.count == size {
                            slices.append(slice)
                            slice = Slice(mapping: mi, source: slice.source, offset: slice.offset + slice.count, count: 0, ranges: [])
                        }
                    }
                }
                if slice.count > 0 { slices.append(slice) }
                i = j + 1
            }
        }
        guard !slices.isEmpty else { return }
        var regions: [UInt32: MappedRegion] = [:]
        for s in Set(slices.map(\.source)) { regions[s] = try image.pageRegion(s) }
        let workers = min(4, ProcessInfo.processInfo.activeProcessorCount, max(1, slices.count / 8))
        let verifier = restorer.pageVerifier
        let pid = tracee.pid
        let mappings = self.mappings
        let failures = UnsafeMutableBufferPointer<WBError?>.allocate(capacity: workers)
        failures.initialize(repeating: nil)
        defer { failures.deallocate() }
        nonisolated(unsafe) let failed = failures
        let work = slices
        let data = regions
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            // Worker w takes the w-th part: neighbouring slices stay on one CPU.
            let per = (work.count + workers - 1) / workers
            let memory = ProcessMemory(pid: pid)
            for k in (w * per)..<min(work.count, (w + 1) * per) {
                let s = work[k]
                guard let region = data[s.source] else { continue }
                do {
                    try region.withBytes { bytes in
                        let piece = UnsafeRawBufferPointer(rebasing: bytes[s.offset..<(s.offset + s.count)])
                        verifier?.note(source: s.source, offset: s.offset, piece)
                        try memory.write(ranges: s.ranges, from: piece)
                    }
                } catch {
                    let m = mappings[s.mapping]
                    failed[w] = (error as? WBError).map { WBError.failed("copying memory into \(hex(m.start))-\(hex(m.end)): \($0)") }
                        ?? .failed("copying memory into \(hex(m.start))-\(hex(m.end)): \(error)")
                    return
                }
            }
        }
        if let e = failures.compactMap({ $0 }).first { throw e }
    }

    /// Puts the mapping's guard pages back: madvise(MADV_GUARD_INSTALL) over each range.
    private func installGuards(_ m: Mapping) throws {
        let MADV_GUARD_INSTALL: UInt64 = 102
        for g in m.guards ?? [] {
            var r = try leader.raw(.madvise, g[0], g[1] - g[0], MADV_GUARD_INSTALL)
            // The kernel asks for a retry when page faults raced the install.
            var tries = 0
            while (r == -Int64(EINTR) || r == -513 /* ERESTARTNOINTR */) && tries < 8 {
                r = try leader.raw(.madvise, g[0], g[1] - g[0], MADV_GUARD_INSTALL)
                tries += 1
            }
            guard r >= 0 else {
                let e = Int32(-r)
                let why = e == EINVAL ? "this kernel puts no guard pages on such a mapping (anonymous memory: Linux 6.13+, file mappings: 6.15+)"
                                      : "madvise(MADV_GUARD_INSTALL) failed: \(WBError.errnoText(e))"
                throw WBError.refused("mapping \(hex(m.start))-\(hex(m.end)) (\(m.path ?? m.kind.rawValue)) has guard pages at \(hex(g[0]))-\(hex(g[1])): \(why)")
            }
        }
    }

    /// An aio context whose ring is `m`: io_setup with the number of events that gives a
    /// ring of the same size (the kernel doubles the number asked for, at least 4 per CPU,
    /// adds two and fills whole pages: 64 per page less 2 fills them; where that is off, the
    /// largest number that fits is searched), its ring then moved to the image's address,
    /// which is the context's id the program knows.
    private mutating func aioContext(_ m: Mapping) throws {
        let pages = m.size / 4096
        func make(_ events: UInt64) throws -> (ring: UInt64, size: UInt64) {
            scratch.reset()
            let id = try scratch.put(words: [0])
            try leader.call(.ioSetup, events, id, what: "making the aio context \(hex(m.start))")
            let ring = try tracee.readWord(id)
            let size = try ProcFS.maps(tracee.pid).first { $0.start == ring }.map { $0.end - $0.start } ?? 0
            return (ring, size)
        }
        var made = try make(pages * 64 - 2)
        if made.size != m.size {
            _ = try leader.raw(.ioDestroy, made.ring)
            var low: UInt64 = 1, high = pages * 64
            var best: UInt64?
            while low <= high {
                let mid = (low + high) / 2
                let probe = try make(mid)
                _ = try leader.raw(.ioDestroy, probe.ring)
                if probe.size == m.size { best = mid }
                if probe.size <= m.size { low = mid + 1 } else { high = mid - 1 }
            }
            guard let best else {
                throw WBError.refused("the aio context \(hex(m.start)) had a ring of \(pages) page\(pages == 1 ? "" : "s"); this machine's kernel (\(ProcessInfo.processInfo.activeProcessorCount) CPUs) makes none of that size")
            }
            made = try make(best)
        }
        try leader.call(.mremap, made.ring, made.size, made.size, 3 /* MREMAP_MAYMOVE|MREMAP_FIXED */, m.start,
                        what: "moving the aio context's ring to \(hex(m.start))")
    }

    /// Final protection, madvise flags and anonymous VMA names.
    private func finish(_ m: Mapping) throws {
        switch m.kind {
        case .vdso, .vvar, .vvarVclock, .vsyscall, .aioRing: return
        default: break
        }
        let what = "\(hex(m.start))-\(hex(m.end))"
        // After the pages are in (a guard drops whatever page is under it) and before mlock
        // (the kernel puts no guards on locked memory).
        try installGuards(m)
        if !(m.kind == .file && m.shared) && m.protection != 3 {
            try leader.call(.mprotect, m.start, m.size, UInt64(m.protection), what: "protecting \(what)")
        }
        // MADV_DONTFORK, WIPEONFORK, HUGEPAGE, NOHUGEPAGE, DONTDUMP, SEQUENTIAL, RANDOM,
        // MERGEABLE (KSM; a kernel without it refuses: noted).
        let advice: [(String, UInt64)] = [("dc", 10), ("wf", 18), ("hg", 14), ("nh", 15), ("dd", 16), ("sr", 2), ("rr", 1), ("mg", 12)]
        for (flag, adv) in advice where m.vmFlags.contains(flag) {
            let r = try leader.raw(.madvise, m.start, m.size, adv)
            if r < 0 && flag == "mg" {
                restorer.note("memory at \(what) was open to KSM merging (MADV_MERGEABLE); this kernel refuses it (\(WBError.errnoText(Int32(-r)))): its pages are not merged", about: process)
            }
        }
        if m.vmFlags.contains("lo") {
            // mlock2(MLOCK_ONFAULT) keeps "lf" (locked as pages are touched); plain mlock faults all in.
            let r = try leader.raw(.mlock2, m.start, m.size, m.vmFlags.contains("lf") ? 1 : 0)
            if r < 0 {
                restorer.note("memory at \(what) was locked (mlock); locking it here failed (\(WBError.errnoText(Int32(-r))))", about: process)
            }
        }
        if let name = m.anonName {
            scratch.reset()
            let n = try scratch.put(string: name)
            _ = try leader.raw(.prctl, 0x53564d41 /* PR_SET_VMA */, 0 /* ANON_NAME */, m.start, m.size, n)
        }
        if let policy = m.numaPolicy {
            var r: Int64 = -Int64(ENOSYS)
            if let words = NUMAPolicy.possibleNodeWords {
                scratch.reset()
                let mask = try scratch.put(words: policy.mask(words: words))
                r = try leader.raw(.mbind, m.start, m.size, UInt64(UInt32(bitPattern: policy.mode)), mask, UInt64(words * 64), 0)
            }
            if r < 0 {
                restorer.note("memory at \(what) had NUMA memory policy \(policy.mode & 0xff) on nodes \(policy.nodes); setting it here failed (\(WBError.errnoText(Int32(-r))))", about: process)
            }
        }
        // Sealed (mseal) last: nothing may change the mapping after that. Every stub of a
        // tree was forked before any memory was built, so no child inherits a seal.
        if m.vmFlags.contains("sl") {
            let r = try leader.raw(.mseal, m.start, m.size, 0)
            if r < 0 {
                restorer.note("memory at \(what) was sealed (mseal); sealing it here failed (\(WBError.errnoText(Int32(-r)))): it can be unmapped or its protection changed", about: process)
            }
        }
    }
}
