import Foundation
import WBSystem

extension Image {
    /// The page sources that hold data: 0 (the PAGE section) and the page store files beside
    /// the image (a timeline's), numbered from 1.
    var pageSourceNumbers: [UInt32] { [0] + (metadata.pageSources ?? []).indices.map { UInt32($0 + 1) } }

    /// The checksum the image records for a page source's data.
    func recordedPageChecksum(_ source: UInt32) -> UInt64 {
        source == 0 ? header.section(.pages)!.checksum : metadata.pageSources![Int(source) - 1].checksum
    }

    /// The error for a section whose checksum is not the recorded one.
    func sectionMismatch(_ s: ImageFormat.Section) -> WBError {
        .badImage(path: path, problem: "corrupted data: checksum mismatch in section \(s.kind.name) (bytes \(s.offset)-\(s.end - 1))")
    }

    /// The error for page data whose checksum is not the recorded one.
    func pageMismatch(_ source: UInt32) -> WBError {
        if source == 0, let s = header.section(.pages) { return sectionMismatch(s) }
        return .badImage(path: path, problem: "corrupted data: checksum mismatch in page store file \(metadata.pageSources![Int(source) - 1].path)")
    }
}

/// Checks an image's page data while a restore copies it, instead of in a pass of its own
/// first: each page is hashed as it is copied, while it is in the CPU's cache, and `finish`
/// hashes the pages no copy read and compares every source's checksum with the recorded one.
/// The restored process must not run before `finish` has returned. Copies running on several
/// threads may note at once: each source's table has a slot per page, made up front, and a
/// note writes only the slots of its own pages.
public final class PageVerifier: @unchecked Sendable {
    private let image: Image
    /// Per source: each page's hash, and whether it has one.
    private final class Progress {
        let hashes: UnsafeMutableBufferPointer<UInt64>
        let seen: UnsafeMutableBufferPointer<Bool>
        init(pages: Int) {
            hashes = .allocate(capacity: max(pages, 1))
            hashes.initialize(repeating: 0)
            seen = .allocate(capacity: max(pages, 1))
            seen.initialize(repeating: false)
        }
        deinit { hashes.deallocate(); seen.deallocate() }
    }
    private let sources: [UInt32: Progress]

    public init(image: Image) throws {
        self.image = image
        var sources: [UInt32: Progress] = [:]
        for source in image.pageSourceNumbers {
            let bytes = try image.pageRegion(source)?.count ?? 0
            sources[source] = Progress(pages: bytes / 4096)
        }
        self.sources = sources
    }

    /// Hashes the whole pages of `bytes`, which are `source`'s data from byte `offset` on.
    public func note(source: UInt32, offset: Int, _ bytes: UnsafeRawBufferPointer) {
        let first = offset / 4096, pages = bytes.count / 4096
        guard let p = sources[source], first >= 0, first + pages <= p.hashes.count, pages > 0 else { return }
        PageChecksum.hash(pages: bytes, into: p.hashes.baseAddress! + first)
        for k in first..<(first + pages) { p.seen[k] = true }
    }

    /// Hashes the pages not copied and compares each source's checksum with the recorded
    /// one (a source without data has the checksum of no pages).
    public func finish() throws {
        for source in image.pageSourceNumbers {
            var hashes: [UInt64] = []
            if let region = try image.pageRegion(source), let p = sources[source] {
                region.adviseSequential()
                region.withBytes { bytes in
                    let pages = min(bytes.count / 4096, p.hashes.count)
                    var k = 0
                    while k < pages {
                        if p.seen[k] { k += 1; continue }
                        var end = k + 1
                        while end < pages && !p.seen[end] { end += 1 }
                        PageChecksum.hash(pages: UnsafeRawBufferPointer(rebasing: bytes[(k * 4096)..<(end * 4096)]), into: p.hashes.baseAddress! + k)
                        k = end
                    }
                    hashes = Array(p.hashes.prefix(pages))
                }
            }
            guard PageChecksum(hashes: hashes).digest == image.recordedPageChecksum(source) else { throw image.pageMismatch(source) }
        }
    }
}
