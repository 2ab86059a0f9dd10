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
/// The restored process must not run before `finish` has returned.
public final class PageVerifier {
    private let image: Image
    /// Per source: the page hashes so far, and which pages have one.
    private final class Progress {
        var sum = PageChecksum()
        var seen: [Bool] = []
    }
    private var sources: [UInt32: Progress] = [:]

    public init(image: Image) { self.image = image }

    /// Hashes the whole pages of `bytes`, which are `source`'s data from byte `offset` on.
    public func note(source: UInt32, offset: Int, _ bytes: UnsafeRawBufferPointer) {
        let first = offset / 4096, pages = bytes.count / 4096
        let p = sources[source] ?? Progress()
        sources[source] = p
        p.sum.set(first: first, bytes)
        if p.seen.count < first + pages { p.seen += repeatElement(false, count: first + pages - p.seen.count) }
        for k in first..<(first + pages) { p.seen[k] = true }
    }

    /// Hashes the pages not copied and compares each source's checksum with the recorded
    /// one (a source without data has the checksum of no pages).
    public func finish() throws {
        for source in image.pageSourceNumbers {
            var sum = sources[source]?.sum ?? PageChecksum()
            let marks = sources[source]?.seen ?? []
            if let region = try image.pageRegion(source) {
                region.adviseSequential()
                region.withBytes { bytes in
                    let pages = bytes.count / 4096
                    var k = 0
                    while k < pages {
                        if k < marks.count && marks[k] { k += 1; continue }
                        var end = k + 1
                        while end < pages && !(end < marks.count && marks[end]) { end += 1 }
                        sum.set(first: k, UnsafeRawBufferPointer(rebasing: bytes[(k * 4096)..<(end * 4096)]))
                        k = end
                    }
                }
            }
            guard sum.digest == image.recordedPageChecksum(source) else { throw image.pageMismatch(source) }
        }
    }
}
