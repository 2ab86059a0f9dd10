import Glibc

/// Reading function symbols from an in-memory ELF64 image (the vdso), for matching entry
/// points between two kernels' vdsos.
public enum ELFSymbols {
    /// Function symbols of the dynamic symbol table: name → offset from the image's base.
    /// Returns nil when `bytes` is not a little-endian ELF64 image with a dynsym table.
    public static func functions(in bytes: [UInt8]) -> [String: UInt64]? {
        guard bytes.count >= 64, bytes[0] == 0x7F, bytes[1] == 0x45, bytes[2] == 0x4C, bytes[3] == 0x46,
              bytes[4] == 2, bytes[5] == 1 else { return nil }
        func u16(_ at: Int) -> Int { at + 2 <= bytes.count ? Int(bytes[at]) | Int(bytes[at + 1]) << 8 : 0 }
        func u32(_ at: Int) -> Int { at + 4 <= bytes.count ? (0..<4).reduce(0) { $0 | Int(bytes[at + $1]) << (8 * $1) } : 0 }
        func u64(_ at: Int) -> UInt64 { at + 8 <= bytes.count ? (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) } : 0 }
        let shoff = Int(u64(0x28)), shentsize = u16(0x3A), shnum = u16(0x3C)
        guard shoff > 0, shentsize >= 64, shoff + shnum * shentsize <= bytes.count else { return nil }
        func section(_ i: Int) -> (type: Int, offset: Int, size: Int, link: Int, entsize: Int) {
            let at = shoff + i * shentsize
            return (u32(at + 4), Int(u64(at + 0x18)), Int(u64(at + 0x20)), u32(at + 0x28), Int(u64(at + 0x38)))
        }
        guard let dynsym = (0..<shnum).map(section).first(where: { $0.type == 11 }), dynsym.link < shnum else { return nil }
        let strtab = section(dynsym.link)
        let entsize = max(dynsym.entsize, 24)
        var out: [String: UInt64] = [:]
        var at = dynsym.offset
        while at + 24 <= dynsym.offset + dynsym.size && at + 24 <= bytes.count {
            let nameOffset = u32(at), info = Int(bytes[at + 4]), shndx = u16(at + 6), value = u64(at + 8)
            if info & 0xF == 2 /* STT_FUNC */ && shndx != 0 && nameOffset > 0 {
                var end = strtab.offset + nameOffset
                let start = end
                while end < bytes.count && end < strtab.offset + strtab.size && bytes[end] != 0 { end += 1 }
                out[String(decoding: bytes[start..<end], as: UTF8.self)] = value
            }
            at += entsize
        }
        return out
    }
}

extension ELFSymbols {
    /// A section of machine code in an ELF file.
    public struct CodeSection: Sendable, Equatable {
        public var name: String
        public var fileOffset: UInt64
        public var size: UInt64
    }

    /// The executable sections (.init, .plt, .text, .fini, ...) of the ELF file at `path`:
    /// where the code is, as opposed to the headers, symbol tables and relocations that
    /// share its executable segment. Nil when the file has no section headers.
    public static func codeSections(of path: String) -> [CodeSection]? {
        guard let elf = ELFFile(path) else { return nil }
        let h = elf.header
        func read(_ offset: Int, _ count: Int) -> [UInt8]? { elf.read(offset, count) }
        let (u16, u32, u64) = (ELFFile.u16, ELFFile.u32, ELFFile.u64)
        let shoff = Int(u64(h, 0x28)), shentsize = u16(h, 0x3A), shnum = u16(h, 0x3C), shstrndx = u16(h, 0x3E)
        guard shoff > 0, shentsize >= 64, shnum > 0, let table = read(shoff, shnum * shentsize) else { return nil }
        var names: [UInt8] = []
        if shstrndx < shnum {
            let at = shstrndx * shentsize
            names = read(Int(u64(table, at + 0x18)), Int(u64(table, at + 0x20))) ?? []
        }
        var out: [CodeSection] = []
        for i in 0..<shnum {
            let at = i * shentsize
            let type = u32(table, at + 4), flags = u64(table, at + 8)
            guard type == 1 /* PROGBITS */, flags & 0x4 /* EXECINSTR */ != 0, flags & 0x2 /* ALLOC */ != 0 else { continue }
            let name = ELFFile.string(names, at: u32(table, at)) ?? ""
            out.append(CodeSection(name: name, fileOffset: u64(table, at + 0x18), size: u64(table, at + 0x20)))
        }
        return out
    }
}

extension ELFSymbols {
    /// The GOT slots of the functions the ELF file at `path` imports (R_X86_64_JUMP_SLOT and
    /// R_X86_64_GLOB_DAT relocations against .dynsym): name → the slot's address relative to
    /// where the file's first loadable segment is mapped (its page-aligned p_vaddr
    /// subtracted). Nil when the file cannot be read as ELF64.
    public static func importSlots(of path: String) -> [String: UInt64]? {
        guard let elf = ELFFile(path) else { return nil }
        let h = elf.header
        func read(_ offset: Int, _ count: Int) -> [UInt8]? { elf.read(offset, count) }
        let (u16, u32, u64) = (ELFFile.u16, ELFFile.u32, ELFFile.u64)
        // The first PT_LOAD's page-aligned p_vaddr: what the load base is relative to.
        let phoff = Int(u64(h, 0x20)), phentsize = u16(h, 0x36), phnum = u16(h, 0x38)
        guard phentsize >= 56, let ph = read(phoff, phnum * phentsize) else { return nil }
        guard let firstLoad = (0..<phnum).first(where: { u32(ph, $0 * phentsize) == 1 }) else { return nil }
        let base = u64(ph, firstLoad * phentsize + 0x10) & ~0xFFF
        let shoff = Int(u64(h, 0x28)), shentsize = u16(h, 0x3A), shnum = u16(h, 0x3C)
        guard shoff > 0, shentsize >= 64, shnum > 0, let table = read(shoff, shnum * shentsize) else { return nil }
        func section(_ i: Int) -> (type: Int, offset: Int, size: Int, link: Int) {
            let at = i * shentsize
            return (u32(table, at + 4), Int(u64(table, at + 0x18)), Int(u64(table, at + 0x20)), u32(table, at + 0x28))
        }
        var out: [String: UInt64] = [:]
        for i in 0..<shnum where section(i).type == 4 /* SHT_RELA */ {
            let rela = section(i)
            guard rela.link < shnum, section(rela.link).type == 11 /* SHT_DYNSYM */ else { continue }
            let dynsym = section(rela.link)
            guard dynsym.link < shnum, let symbols = read(dynsym.offset, dynsym.size),
                  let strings = read(section(dynsym.link).offset, section(dynsym.link).size),
                  let entries = read(rela.offset, rela.size) else { continue }
            for at in stride(from: 0, to: entries.count - 23, by: 24) {
                let info = u64(entries, at + 8)
                let type = info & 0xFFFF_FFFF, symbol = Int(info >> 32)
                guard type == 7 || type == 6, symbol > 0, symbol * 24 + 24 <= symbols.count else { continue }
                guard let name = ELFFile.string(strings, at: u32(symbols, symbol * 24)) else { continue }
                out[name] = u64(entries, at) &- base
            }
        }
        return out
    }
}

/// An ELF64 little-endian file opened for the readers above: bounded reads, its header, and
/// the little-endian fields and NUL-terminated strings they take apart.
private struct ELFFile {
    let fd: FileDescriptor
    /// The first 64 bytes (the ELF header).
    let header: [UInt8]

    init?(_ path: String) {
        guard let fd = try? FileDescriptor.open(path, O_RDONLY) else { return nil }
        guard let h = ELFFile.read(fd, 0, 64), h[0] == 0x7F, h[1] == 0x45, h[2] == 0x4C, h[3] == 0x46, h[4] == 2, h[5] == 1 else { return nil }
        self.fd = fd
        header = h
    }

    /// `count` bytes at `offset` (at most 64 MiB), nil when the file is shorter.
    func read(_ offset: Int, _ count: Int) -> [UInt8]? { ELFFile.read(fd, offset, count) }

    private static func read(_ fd: FileDescriptor, _ offset: Int, _ count: Int) -> [UInt8]? {
        guard count > 0, count < 1 << 26 else { return nil }
        var out = [UInt8](repeating: 0, count: count)
        let got = (try? out.withUnsafeMutableBytes { try fd.read(into: $0, at: UInt64(offset)) }) ?? 0
        return got == count ? out : nil
    }

    static func u16(_ b: [UInt8], _ at: Int) -> Int { Int(b[at]) | Int(b[at + 1]) << 8 }
    static func u32(_ b: [UInt8], _ at: Int) -> Int { (0..<4).reduce(0) { $0 | Int(b[at + $1]) << (8 * $1) } }
    static func u64(_ b: [UInt8], _ at: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) } }

    /// The NUL-terminated string at `at` in a string table; nil past its end.
    static func string(_ table: [UInt8], at: Int) -> String? {
        guard at < table.count else { return nil }
        var end = at
        while end < table.count && table[end] != 0 { end += 1 }
        return String(decoding: table[at..<end], as: UTF8.self)
    }
}
