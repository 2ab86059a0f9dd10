import Foundation
import Glibc
import Testing
@testable import WBCore

/// Writes a small image with known pages and an embedded file, in a fresh directory.
func makeImage(in dir: String, name: String = "test.wbimg") throws -> (path: String, metadata: ImageMetadata) {
    let path = "\(dir)/\(name)"
    let writer = try ImageWriter(path: path)
    var page = [UInt8](repeating: 0, count: 8192)
    for i in 0..<page.count { page[i] = UInt8(truncatingIfNeeded: i * 7) }
    let offset = try page.withUnsafeBytes { try writer.appendPages($0) }
    let lib = "\(dir)/lib.so"
    let content = [UInt8]("library bytes".utf8) + [UInt8](repeating: 1, count: 5000)
    _ = FileManager.default.createFile(atPath: lib, contents: Data(content))
    let file = try writer.embed(file: FileDescriptor.open(lib, O_RDONLY), path: lib, code: true)
    let again = try writer.embed(file: FileDescriptor.open(lib, O_RDONLY), path: "/other/name.so", code: true)
    #expect(again.hash == file.hash && again.dataOffset == file.dataOffset)
    var process = ProcessState(pid: 4242)
    process.threads = [ThreadState(tid: 4242, comm: "t", registers: Registers(), xstate: Data([1, 2, 3]), sigmask: 5)]
    var m = Mapping(start: 0x10000, end: 0x14000, protection: 3, shared: false, kind: .anonymous, offset: 0, path: nil)
    m.pages = [PageRun(page: 1, count: 2, dataOffset: offset)]
    process.mappings = [m]
    let meta = ImageMetadata(host: HostInfo(hostname: "h", kernel: "k", cpu: CPUFeatures(vendor: "v", model: "m", flags: ["avx2"], xcr0: 7, xsaveSize: 832)),
                             process: process, files: writer.embeddedFiles, notes: [])
    try writer.finish(meta, sync: false)
    return (path, meta)
}

func temporaryDirectory() -> String {
    let root = ProcessInfo.processInfo.environment["WB_TEST_DIR"] ?? "/tmp"
    var template = Array("\(root)/wb-test-XXXXXX".utf8CString)
    let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }!
    return String(cString: p)
}

func corrupt(_ path: String, at offset: UInt64, xor: UInt8 = 0xFF) throws {
    let fd = try FileDescriptor.open(path, O_RDWR)
    var b: [UInt8] = [0]
    _ = try b.withUnsafeMutableBytes { try fd.read(into: $0, at: offset) }
    b[0] ^= xor
    try fd.write(b, at: offset)
}

@Suite struct ImageFormatTests {
    @Test func roundTripKeepsMetadataPagesAndFiles() throws {
        let dir = temporaryDirectory()
        let (path, meta) = try makeImage(in: dir)
        let image = try Image(path: path)
        #expect(image.metadata == meta)
        try image.verifyData()
        let run = image.process.mappings[0].pages[0]
        let data = try image.map(.pages, offset: run.dataOffset, length: run.byteCount)
        data.withBytes { #expect($0[1] == 7 && $0[8191] == UInt8(truncatingIfNeeded: 8191 * 7)) }
        let file = image.metadata.files[0]
        #expect(file.paths == ["\(dir)/lib.so", "/other/name.so"])
        let content = try image.contents(of: file)
        content.withBytes { #expect(Array($0.prefix(7)) == Array("library".utf8)) }
        #expect(image.absoluteOffset(.files, file.dataOffset) % 4096 == 0)
        // No partial file is left behind.
        #expect(try Paths.list(dir).sorted() == ["lib.so", "test.wbimg"])
    }

    @Test func truncatedImageNamesTheSection() throws {
        let dir = temporaryDirectory()
        let (path, _) = try makeImage(in: dir)
        let size = try Paths.stat(path).size
        #expect(truncate(path, off_t(size - 100)) == 0)
        #expect(throws: WBError.self) { try Image(path: path) }
        do { _ = try Image(path: path) } catch {
            #expect("\(error)".contains("truncated"))
            #expect("\(error)".contains("META"))
        }
        #expect(truncate(path, 100) == 0)
        do { _ = try Image(path: path); Issue.record("opened a 100-byte image") } catch {
            #expect("\(error)".contains("truncated: the header needs 4096 bytes"))
        }
    }

    @Test func corruptedBytesAreFoundInTheirSection() throws {
        let dir = temporaryDirectory()
        let (path, _) = try makeImage(in: dir)
        let image = try Image(path: path)
        let pages = image.header.section(.pages)!
        let meta = image.header.section(.metadata)!
        // A flipped page byte passes opening (lazy) but fails verification, naming PAGE.
        try corrupt(path, at: pages.offset + 5000)
        let reopened = try Image(path: path)
        do { try reopened.verifyData(); Issue.record("corruption not detected") } catch {
            #expect("\(error)".contains("checksum mismatch in section PAGE"))
        }
        // A flipped metadata byte fails opening.
        try corrupt(path, at: meta.offset + 10)
        do { _ = try Image(path: path); Issue.record("corruption not detected") } catch {
            #expect("\(error)".contains("corrupted metadata"))
        }
        // A flipped header byte.
        try corrupt(path, at: 30)
        do { _ = try Image(path: path); Issue.record("corruption not detected") } catch {
            #expect("\(error)".contains("corrupted header"))
        }
    }

    @Test func foreignFilesAreRecognized() throws {
        let dir = temporaryDirectory()
        do { _ = try Image(path: "/bin/true"); Issue.record("opened an ELF file") } catch {
            #expect("\(error)" == "/bin/true: not a wb image: this is an ELF file (an executable or core dump)")
        }
        let text = "\(dir)/notes.txt"
        _ = FileManager.default.createFile(atPath: text, contents: Data("hello".utf8))
        do { _ = try Image(path: text); Issue.record("opened a text file") } catch {
            #expect("\(error)".hasSuffix("not a wb image: the first bytes are not the wb image magic"))
        }
        do { _ = try Image(path: "\(dir)/missing"); Issue.record("opened a missing file") } catch {
            #expect("\(error)" == "\(dir)/missing: no such image file")
        }
        let empty = "\(dir)/empty"
        _ = FileManager.default.createFile(atPath: empty, contents: Data())
        do { _ = try Image(path: empty); Issue.record("opened an empty file") } catch {
            #expect("\(error)".contains("empty file"))
        }
    }

    @Test func newerFormatVersionIsRefusedWithAdvice() throws {
        let dir = temporaryDirectory()
        let (path, _) = try makeImage(in: dir)
        let fd = try FileDescriptor.open(path, O_RDWR)
        var header = [UInt8](repeating: 0, count: 4096)
        _ = try header.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) }
        var decoded = try ImageHeader.decode(header, path: path, fileSize: try fd.size)
        decoded.version = 9
        try fd.write(decoded.encoded(), at: 0)
        do { _ = try Image(path: path); Issue.record("opened a version-9 image") } catch {
            #expect("\(error)".contains("version 9 is not supported"))
        }
    }

    /// Writes an image of one process, with `change` applied, and the error reading it
    /// back gives (nil when it is accepted).
    private func rejection(of change: (inout ProcessState) -> Void) throws -> String? {
        let path = "\(temporaryDirectory())/bad.wbimg"
        let writer = try ImageWriter(path: path)
        var process = ProcessState(pid: 7)
        process.threads = [ThreadState(tid: 7, comm: "t", registers: Registers(), xstate: Data(), sigmask: 0)]
        change(&process)
        try writer.finish(ImageMetadata(host: HostInfo(hostname: "", kernel: "", cpu: CPUFeatures(vendor: "", model: "", flags: [], xcr0: 0, xsaveSize: 0)),
                                        process: process, files: [], notes: []), sync: false)
        do { _ = try Image(path: path); return nil } catch { return "\(error)" }
    }

    @Test func metadataThatBreaksTheStructureIsRejected() throws {
        let error = try rejection {
            var m = Mapping(start: 0x10000, end: 0x11000, protection: 3, shared: false, kind: .anonymous, offset: 0, path: nil)
            m.pages = [PageRun(page: 0, count: 4, dataOffset: 0)]
            $0.mappings = [m]
        }
        #expect(error?.contains("mappings[0]") == true, "\(error ?? "accepted a page run outside its mapping")")
    }

    @Test func aSystemVMappingWithoutItsSegmentIsRejected() throws {
        let error = try rejection {
            var m = Mapping(start: 0x10000, end: 0x11000, protection: 3, shared: true, kind: .sysvShm, offset: 0, path: "/SYSV00001234")
            m.shmid = 5
            $0.mappings = [m]
            $0.sysvSegments = [SysVSegment(id: 6, key: 0x1234, size: 4096, mode: 0o600, uid: 0, gid: 0, removed: false, locked: false)]
        }
        #expect(error?.contains("System V segment 5") == true, "\(error ?? "accepted a mapping of a segment the process does not list")")
    }

    @Test func interruptedSyscallIsRestartedAtTheSyscallInstruction() {
        var r = Registers()
        r.origRax = 35   // nanosleep
        r.rax = UInt64(bitPattern: -516)
        r.rip = 0x1002
        let call = InterruptedSyscall(r)
        #expect(call?.number == 35 && call?.restartName == "ERESTART_RESTARTBLOCK")
        let out = InterruptedSyscall.restartRegisters(r)
        #expect(out.rax == 35 && out.rip == 0x1000 && out.origRax == UInt64.max)
        r.rax = 0
        #expect(InterruptedSyscall(r) == nil)
    }
}

@Suite struct ELFSymbolTests {
    @Test func readsTheVdsoFunctionsOfThisProcess() throws {
        let maps = try Paths.readText("/proc/self/maps").split(separator: "\n")
        let line = try #require(maps.first { $0.hasSuffix("[vdso]") })
        let range = line.split(separator: " ")[0].split(separator: "-").map { UInt64($0, radix: 16)! }
        let bytes = try Paths.readBytes("/proc/self/mem", limit: 0)   // opened just to prove access
        #expect(bytes.isEmpty)
        let fd = try FileDescriptor.open("/proc/self/mem", O_RDONLY)
        var image = [UInt8](repeating: 0, count: Int(range[1] - range[0]))
        _ = try image.withUnsafeMutableBytes { try fd.read(into: $0, at: range[0]) }
        let symbols = try #require(ELFSymbols.functions(in: image))
        #expect(symbols["__vdso_clock_gettime"] != nil)
        #expect(symbols["__vdso_gettimeofday"] != nil)
        #expect(symbols.values.allSatisfy { $0 < UInt64(image.count) })
        #expect(ELFSymbols.functions(in: [1, 2, 3]) == nil)
    }
}

@Suite struct CPUCompatibilityTests {
    @Test func namesInstructionFeaturesTheHostLacks() {
        let image = CPUFeatures(vendor: "", model: "", flags: ["fpu", "avx2", "avx512f", "sse4_2", "hypervisor"], xcr0: 0xe7, xsaveSize: 2696)
        let host = CPUFeatures(vendor: "", model: "", flags: ["fpu", "avx2", "sse4_2"], xcr0: 7, xsaveSize: 832)
        #expect(CPUCompatibility.missing(image: image, host: host) == ["avx512f"])
    }

    @Test func dropsXsaveComponentsTheHostLacksAndResizes() {
        var area = Data(count: 2696)
        let bv: UInt64 = 0xe7   // x87 SSE AVX + AVX-512 opmask, ZMM_Hi256, Hi16_ZMM
        withUnsafeBytes(of: bv) { area.replaceSubrange(512..<520, with: $0) }
        #expect(CPUCompatibility.unsupportedState(area, xcr0: 7) == 0xe0)
        #expect(CPUCompatibility.componentNames(0xe0) == "AVX-512 opmask, AVX-512 ZMM_Hi256, AVX-512 Hi16_ZMM")
        let adapted = CPUCompatibility.adapt(area, xcr0: 7, size: 832)
        #expect(adapted.count == 832)
        #expect(CPUCompatibility.xstateBV(adapted) == 7)
    }
}
