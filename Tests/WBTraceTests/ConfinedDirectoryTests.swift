import Foundation
import Glibc
import Testing
@testable import WBSystem

/// Names from images and links planted in wb's directories never lead outside: each test
/// runs with openat2 and with the walk kernels without it get.
@Suite struct ConfinedDirectoryTests {
    static let resolutions: [ConfinedDirectory.Resolution] = [.openat2, .walk]

    /// A fresh directory holding `root` (not yet made) and `canary`, a directory outside it
    /// with one file, which nothing may change.
    struct Scene {
        let base: String
        var root: String { "\(base)/root" }
        var canary: String { "\(base)/canary" }
        var victim: String { "\(canary)/victim.txt" }

        init() {
            let top = ProcessInfo.processInfo.environment["WB_TEST_DIR"] ?? "/tmp"
            var template = Array("\(top)/wb-confined-XXXXXX".utf8CString)
            base = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            mkdir(canary, 0o755)
            _ = FileManager.default.createFile(atPath: victim, contents: Data("precious".utf8))
        }

        func open(_ resolution: ConfinedDirectory.Resolution) throws -> ConfinedDirectory {
            try ConfinedDirectory(opening: root, mode: 0o700, resolution: resolution)
        }

        /// The canary is as it was: only victim.txt, a regular file with its bytes.
        func expectCanaryUntouched(sourceLocation: SourceLocation = #_sourceLocation) {
            #expect((try? Paths.list(canary)) == ["victim.txt"], sourceLocation: sourceLocation)
            var st = stat()
            #expect(lstat(victim, &st) == 0 && st.st_mode & S_IFMT == S_IFREG, sourceLocation: sourceLocation)
            #expect((try? Paths.readText(victim)) == "precious", sourceLocation: sourceLocation)
        }

        func link(_ target: String, at path: String) { #expect(Glibc.symlink(target, path) == 0) }
    }

    func refusal(_ body: () throws -> Void) -> String? {
        do { try body(); return nil } catch let WBError.refused(why) { return why } catch { return "not a refusal: \(error)" }
    }

    @Test func pathsAreSplitAndDotDotOrNULRefusedByName() throws {
        #expect(try ConfinedDirectory.components(of: "/usr//lib/./x86_64-linux-gnu/libc.so.6/")
                == ["usr", "lib", "x86_64-linux-gnu", "libc.so.6"])
        #expect(try ConfinedDirectory.components(of: "relative/name") == ["relative", "name"])
        #expect(try ConfinedDirectory.components(of: "/") == [])
        let up = refusal { _ = try ConfinedDirectory.components(of: "/../../../../tmp/x/victim.txt") }
        #expect(up == #"refusing path "/../../../../tmp/x/victim.txt": it has a '..' component"#)
        #expect(refusal { _ = try ConfinedDirectory.components(of: "/usr/lib/..") }?.contains("'..'") == true)
        // "..." and "..x" are ordinary names.
        #expect(try ConfinedDirectory.components(of: "/a/.../..x") == ["a", "...", "..x"])
        let nul = refusal { _ = try ConfinedDirectory.components(of: "/usr/lib\u{0}/x") }
        #expect(nul == #"refusing path "/usr/lib\0/x": it has a NUL byte"#)
        // A newline in a name stays on one line in the message.
        #expect(refusal { _ = try ConfinedDirectory.components(of: "/a\n/../b") }?.contains("\n") == false)
    }

    @Test(arguments: resolutions)
    func absolutePathsCountFromTheRootAndDotDotCreatesNothing(resolution: ConfinedDirectory.Resolution) throws {
        let scene = Scene()
        let dir = try scene.open(resolution)
        var st = stat()
        #expect(stat(scene.root, &st) == 0 && st.st_mode & 0o777 == 0o700, "created 0700")
        try dir.makeDirectories("/usr/lib/x86_64-linux-gnu")
        try dir.symlink(target: "/usr/lib/x86_64-linux-gnu/libc.so.6", at: "/usr/lib/x86_64-linux-gnu/libc.so.6")
        #expect(try Paths.readLink("\(scene.root)/usr/lib/x86_64-linux-gnu/libc.so.6") == "/usr/lib/x86_64-linux-gnu/libc.so.6")
        #expect(try dir.path(of: "/usr/lib") == "\(scene.root)/usr/lib")
        #expect(try dir.status(of: "usr/lib/x86_64-linux-gnu/libc.so.6")?.kind == .symbolicLink)
        #expect(try dir.status(of: "usr/lib")?.kind == .directory)
        #expect(try dir.status(of: "usr/nothing/here") == nil)
        // The attack that started this: a link-map name climbing out to a file of root's.
        let escape = "/../../../../../../../../../..\(scene.victim)"
        #expect(refusal { try dir.makeDirectories(Paths.directory(of: escape)) }?.contains("'..'") == true)
        #expect(refusal { try dir.symlink(target: "/etc/passwd", at: escape) }?.contains("'..'") == true)
        #expect(refusal { _ = try dir.createFile(escape) }?.contains("'..'") == true)
        #expect(refusal { try dir.rename("usr/lib", to: escape) }?.contains("'..'") == true)
        scene.expectCanaryUntouched()
    }

    @Test(arguments: resolutions)
    func aPlantedLinkOnTheWayIsRefusedAndNothingIsCreatedOutside(resolution: ConfinedDirectory.Resolution) throws {
        let scene = Scene()
        let dir = try scene.open(resolution)
        try dir.makeDirectories("a")
        scene.link(scene.canary, at: "\(scene.root)/a/out")
        scene.link(scene.canary, at: "\(scene.root)/top")
        for path in ["a/out", "a/out/sub/deeper", "top/x", "/top"] {
            let why = refusal { try dir.makeDirectories(path) }
            #expect(why?.contains("symbolic link") == true, "\(path): \(why ?? "made")")
        }
        #expect(refusal { try dir.symlink(target: "/etc/passwd", at: "a/out/victim.txt") }?.contains("symbolic link") == true)
        #expect(refusal { try dir.symlink(target: "/etc/passwd", at: "top/new") }?.contains("symbolic link") == true)
        #expect(refusal { _ = try dir.createFile("a/out/new") }?.contains("symbolic link") == true)
        #expect(refusal { try dir.remove("top/victim.txt") }?.contains("symbolic link") == true)
        #expect(refusal { _ = try dir.status(of: "top/victim.txt") }?.contains("symbolic link") == true)
        #expect(refusal { _ = try dir.subdirectory("top") }?.contains("symbolic link") == true)
        let file = try dir.createFile("a/file")
        file.close()
        #expect(refusal { try dir.rename("a/file", to: "top/victim.txt") }?.contains("symbolic link") == true)
        // A regular file on the way is not a directory either.
        #expect(refusal { try dir.makeDirectories("a/file/sub") }?.contains("not a directory") == true)
        scene.expectCanaryUntouched()
    }

    @Test(arguments: resolutions)
    func aPlantedLinkAtTheLastNameIsReplacedItselfNotItsTarget(resolution: ConfinedDirectory.Resolution) throws {
        let scene = Scene()
        let dir = try scene.open(resolution)
        try dir.makeDirectories("lib")
        scene.link(scene.victim, at: "\(scene.root)/lib/libc.so.6")
        try dir.symlink(target: "/usr/lib/x86_64-linux-gnu/libc.so.6", at: "/lib/libc.so.6")
        #expect(try Paths.readLink("\(scene.root)/lib/libc.so.6") == "/usr/lib/x86_64-linux-gnu/libc.so.6")
        // Again over its own link, as a second build does.
        try dir.symlink(target: "/usr/lib/x86_64-linux-gnu/libc.so.6", at: "/lib/libc.so.6")
        // A dangling link and a regular file are replaced too.
        scene.link("\(scene.canary)/not-yet", at: "\(scene.root)/lib/dangling")
        try dir.symlink(target: "/x", at: "lib/dangling")
        _ = FileManager.default.createFile(atPath: "\(scene.root)/lib/plain", contents: Data("x".utf8))
        try dir.symlink(target: "/y", at: "lib/plain")
        #expect(try dir.status(of: "lib/plain")?.kind == .symbolicLink)
        // A directory is not.
        #expect(refusal { try dir.symlink(target: "/z", at: "lib") }?.contains("is a directory") == true)
        // Creating exclusively never opens what a planted link points to.
        scene.link(scene.victim, at: "\(scene.root)/lib/temp")
        do { _ = try dir.createFile("lib/temp"); Issue.record("created over a link") } catch let WBError.system(_, e, _) {
            #expect(e == EEXIST)
        }
        // Renaming over a planted link replaces the link.
        let out = try dir.createFile("lib/new", mode: 0o600)
        try out.write(Array("fresh".utf8), at: 0)
        out.close()
        try dir.rename("lib/new", to: "lib/temp")
        #expect(try dir.status(of: "lib/temp")?.kind == .regular)
        #expect(try Paths.readText("\(scene.root)/lib/temp") == "fresh")
        try dir.remove("lib/temp")
        try dir.remove("lib/temp")
        #expect(try dir.status(of: "lib/temp") == nil)
        scene.expectCanaryUntouched()
    }

    @Test func theDirectoryItselfMustBeOursAndNotALink() throws {
        let scene = Scene()
        scene.link(scene.canary, at: scene.root)
        let why = refusal { _ = try ConfinedDirectory(opening: scene.root) }
        #expect(why == "refusing \(scene.root): it is a symbolic link, not a directory of its own")
        // A trailing slash does not make the link followed.
        #expect(refusal { _ = try ConfinedDirectory(opening: scene.root + "/") }?.contains("symbolic link") == true)
        _ = FileManager.default.createFile(atPath: "\(scene.base)/file", contents: Data())
        #expect(refusal { _ = try ConfinedDirectory(opening: "\(scene.base)/file") }?.contains("not a directory") == true)
        // Missing parents are made.
        let nested = try ConfinedDirectory(opening: "\(scene.base)/p/q/cache")
        #expect(try nested.status(of: "")?.permissions == 0o700)
        let sub = try nested.subdirectory("files")
        #expect(sub.path == "\(scene.base)/p/q/cache/files")
        #expect(try nested.status(of: "files")?.permissions == 0o700)
        if geteuid() == 0 {
            // As root: a directory another user made first (as in /tmp) is refused.
            mkdir("\(scene.base)/theirs", 0o777)
            #expect(chown("\(scene.base)/theirs", 65534, 65534) == 0)
            #expect(refusal { _ = try ConfinedDirectory(opening: "\(scene.base)/theirs") }
                    == "refusing \(scene.base)/theirs: it belongs to uid 65534, not to uid 0 that runs wb")
            mkdir("\(scene.base)/p/q/cache/files/theirs", 0o777)
            #expect(chown("\(scene.base)/p/q/cache/files/theirs", 65534, 65534) == 0)
            #expect(refusal { _ = try sub.subdirectory("theirs") }?.contains("belongs to uid 65534") == true)
        }
        scene.expectCanaryUntouched()
    }
}
