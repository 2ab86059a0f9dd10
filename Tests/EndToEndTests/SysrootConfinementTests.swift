import Foundation
import Glibc
import Testing
import WBCore

/// `wb restore --debug` builds gdb's sysroot from paths in the image, often as root: links
/// planted in the cache and paths forged in the image change nothing outside the cache.
extension DebugTests {
    /// A directory outside the cache with two files nothing may change: victim.txt, and
    /// same-size.bin, which has the size of `size` bytes (a cached copy wb must not take it for).
    struct Canary {
        let path: String
        init(in dir: String, sameSizeAs size: UInt64) {
            path = "\(dir)/canary"
            mkdir(path, 0o755)
            _ = FileManager.default.createFile(atPath: "\(path)/victim.txt", contents: Data("precious".utf8))
            _ = FileManager.default.createFile(atPath: "\(path)/same-size.bin", contents: Data(count: Int(size)))
        }
        var victim: String { "\(path)/victim.txt" }
        var sameSize: String { "\(path)/same-size.bin" }

        func expectUntouched(sourceLocation: SourceLocation = #_sourceLocation) {
            #expect((try? Paths.list(path).sorted()) == ["same-size.bin", "victim.txt"], sourceLocation: sourceLocation)
            for f in [victim, sameSize] {
                var st = stat()
                #expect(lstat(f, &st) == 0 && st.st_mode & S_IFMT == S_IFREG, "\(f) was replaced", sourceLocation: sourceLocation)
            }
            #expect((try? Paths.readText(victim)) == "precious", sourceLocation: sourceLocation)
            #expect((try? Paths.readBytes(sameSize, limit: 1 << 30))?.allSatisfy { $0 == 0 } == true, sourceLocation: sourceLocation)
        }
    }

    func isLink(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFLNK
    }

    func isRegular(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFREG
    }

    @Test func linksPlantedInTheSysrootAndFileCacheChangeNothingOutside() throws {
        let dir = scratchDirectory()
        let (image, _, _) = try imageOfDeletedProgram("service", ["--accounts", "10", "--interval-ms", "100"], dir: dir)
        let opened = try Image(path: image)
        let exe = opened.process.exe
        let exeFile = try #require(opened.metadata.files.first { $0.paths.contains(exe) })
        let libc = try #require(opened.process.mappings.compactMap(\.path).first { $0.contains("/libc.so") })
        try #require(libc.hasPrefix("/usr/"), "libc at \(libc): this test plants links under /usr in the sysroot")
        let canary = Canary(in: dir, sameSizeAs: exeFile.size)
        let cache = "\(dir)/cache"
        let sysroot = "\(cache)/sysroots/\(String(opened.header.section(.metadata)!.checksum, radix: 16))"
        // At libc's own name: the link gdb would find, pointing at a file of someone else's.
        try Paths.makeDirectories(sysroot + Paths.directory(of: libc))
        #expect(symlink(canary.victim, sysroot + libc) == 0)
        // On the way to the executable (and to the cache's copy of it, both under `dir`).
        try Paths.makeDirectories(sysroot + Paths.directory(of: dir))
        #expect(symlink(canary.path, sysroot + dir) == 0)
        // The executable's entry in the file cache, a link to a file of the right size.
        try Paths.makeDirectories("\(cache)/files")
        #expect(symlink(canary.sameSize, "\(cache)/files/\(exeFile.hash)") == 0)

        let run = try wb(["restore", image, "--debug", "--", "-batch", "-ex", "info sharedlibrary"], env: ["WB_CACHE_DIR": cache])
        #expect(run.code == 0, "\(run.stderr)")
        #expect(run.stdout.contains("libc.so"), "gdb listed no libc: \(run.stdout)\n\(run.stderr)")
        canary.expectUntouched()
        // The planted links were replaced themselves: libc's by the sysroot's own link, the
        // cache entry by an unpacked copy.
        #expect(isLink(sysroot + libc) && (try? Paths.readLink(sysroot + libc)) != canary.victim)
        #expect(isRegular("\(cache)/files/\(exeFile.hash)"))
        #expect(try Paths.stat("\(cache)/files/\(exeFile.hash)").size == exeFile.size)
        // The link on the way stays, and what lay beyond it was left out, named.
        #expect(try Paths.readLink(sysroot + dir) == canary.path)
        #expect(run.stderr.contains("wb: note: gdb's sysroot leaves out a path from the image: refusing \(sysroot + dir)"), "\(run.stderr)")
        #expect(run.stderr.contains("a symbolic link is in the way"), "\(run.stderr)")
    }

    @Test func forgedPathsThatClimbOutOfTheSysrootAreLeftOutByName() throws {
        let dir = scratchDirectory()
        let (image, _, _) = try imageOfDeletedProgram("service", ["--accounts", "10", "--interval-ms", "100"], dir: dir)
        let canary = Canary(in: dir, sameSizeAs: 0)
        // Enough `..` to reach / from anywhere, then down into the canary.
        let escape = String(repeating: "/..", count: 32) + canary.path
        let forged = "\(dir)/forged.wbimg"
        try Image(path: image).copy(to: forged) { m in
            // Another name for the executable's embedded copy.
            if let i = m.files.firstIndex(where: { $0.paths.contains(m.process.exe) }) { m.files[i].paths.append("\(escape)/named") }
            // A later mapping of libc (the first decides which file is mapped) names a path out.
            if let i = m.process.mappings.lastIndex(where: { $0.path?.contains("/libc.so") == true }) {
                m.process.mappings[i].path = "\(escape)/mapped"
            }
        }
        let run = try wb(["restore", forged, "--debug", "--", "-batch", "-ex", "info sharedlibrary"], env: ["WB_CACHE_DIR": "\(dir)/cache"])
        #expect(run.code == 0, "\(run.stderr)")
        #expect(run.stdout.contains("libc.so"), "gdb listed no libc: \(run.stdout)\n\(run.stderr)")
        canary.expectUntouched()
        for name in ["named", "mapped"] {
            #expect(run.stderr.contains("refusing path \"\(escape)/\(name)\": it has a '..' component"), "\(run.stderr)")
        }
    }

    @Test func aCacheDirectoryThatIsALinkIsRefusedWithWhatToDo() throws {
        let dir = scratchDirectory()
        let (image, _, _) = try imageOfDeletedProgram("service", ["--accounts", "10", "--interval-ms", "100"], dir: dir)
        let canary = Canary(in: dir, sameSizeAs: 0)
        // The cache itself, or its files/, a link to someone else's directory.
        let linked = "\(dir)/linked-cache"
        #expect(symlink(canary.path, linked) == 0)
        try Paths.makeDirectories("\(dir)/cache")
        #expect(symlink(canary.path, "\(dir)/cache/files") == 0)
        for (cache, refused) in [(linked, linked), ("\(dir)/cache", "\(dir)/cache/files")] {
            let run = try wb(["restore", image, "--debug", "--", "-batch", "-ex", "info sharedlibrary"], env: ["WB_CACHE_DIR": cache])
            #expect(run.code == 1, "\(run.stderr)")
            let errors = run.stderr.split(separator: "\n").filter { $0.hasPrefix("wb: error: ") }
            #expect(errors.count == 1 && errors[0].contains("refusing \(refused): ") && errors[0].contains("symbolic link")
                    && errors[0].hasSuffix("set WB_CACHE_DIR to a directory of your own for wb's cache"), "\(run.stderr)")
            canary.expectUntouched()
        }
    }
}
