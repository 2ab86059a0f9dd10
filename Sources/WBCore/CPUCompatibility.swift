import Foundation

/// Whether a process checkpointed on one CPU can run on another: glibc (and code built with
/// -march) pick instructions at start-up from the CPU's features, and the XSAVE area holds
/// state only CPUs with those features can take.
public enum CPUCompatibility {
    /// /proc/cpuinfo flags that name instructions user code may have been chosen for.
    public static let instructionFlags: Set<String> = [
        "pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "abm", "movbe", "cx16", "avx", "avx2", "fma", "f16c",
        "bmi1", "bmi2", "adx", "aes", "pclmulqdq", "sha_ni", "rdrand", "rdseed", "erms", "fsrm", "rtm",
        "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi", "avx512_vbmi2",
        "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "avx512_bf16", "avx512_fp16", "avx_vnni",
        "vaes", "vpclmulqdq", "gfni", "amx_tile", "amx_bf16", "amx_int8", "xsavec", "clflushopt", "clwb",
        "movdiri", "movdir64b", "serialize",
    ]

    /// Instruction-set features the image's CPU had and this one lacks, sorted.
    public static func missing(image: CPUFeatures, host: CPUFeatures) -> [String] {
        let here = Set(host.flags)
        return image.flags.filter { instructionFlags.contains($0) && !here.contains($0) }.sorted()
    }

    /// XSAVE components holding live state in `xstate` that a CPU with `xcr0` cannot take.
    public static func unsupportedState(_ xstate: Data, xcr0: UInt64) -> UInt64 {
        xstateBV(xstate) & ~xcr0
    }

    /// XSTATE_BV from the XSAVE header (bytes 512-519).
    public static func xstateBV(_ xstate: Data) -> UInt64 {
        guard xstate.count >= 520 else { return 0 }
        return xstate.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 512, as: UInt64.self) }
    }

    /// `xstate` made fit for this CPU: components it lacks dropped (their state is lost) and
    /// the area cut or padded to `size` bytes.
    public static func adapt(_ xstate: Data, xcr0: UInt64, size: Int) -> Data {
        var out = xstate
        if out.count >= 520 {
            let bv = xstateBV(out) & xcr0
            withUnsafeBytes(of: bv.littleEndian) { out.replaceSubrange(512..<520, with: $0) }
        }
        if out.count > size { out = out.prefix(size) } else if out.count < size { out.append(Data(count: size - out.count)) }
        return out
    }

    /// Names of XSAVE components (bit numbers of XCR0).
    public static func componentNames(_ bits: UInt64) -> String {
        let names = [0: "x87", 1: "SSE", 2: "AVX", 3: "MPX bounds", 4: "MPX csr", 5: "AVX-512 opmask",
                     6: "AVX-512 ZMM_Hi256", 7: "AVX-512 Hi16_ZMM", 9: "PKRU", 17: "AMX tile config", 18: "AMX tile data"]
        return (0..<64).filter { bits & (1 << UInt64($0)) != 0 }.map { names[$0] ?? "component \($0)" }.joined(separator: ", ")
    }

    /// glibc tunables that make it choose baseline x86-64 code (see `wb run --portable`).
    public static let portableTunables = "glibc.cpu.hwcaps=" + [
        "AVX", "AVX2", "AVX512F", "AVX512BW", "AVX512CD", "AVX512DQ", "AVX512ER", "AVX512PF", "AVX512VL",
        "AVX512_VBMI", "AVX512_VBMI2", "AVX512_VNNI", "AVX512_BITALG", "AVX512_IFMA", "AVX512_VPOPCNTDQ",
        "AVX512_BF16", "AVX512_FP16", "FMA", "FMA4", "BMI1", "BMI2", "LZCNT", "MOVBE", "POPCNT", "SSE4_1",
        "SSE4_2", "SSSE3", "ERMS", "FSRM", "RTM", "F16C",
    ].map { "-" + $0 }.joined(separator: ",")

    /// The environment marker `wb run --portable` leaves, which checkpoints record.
    public static let portableMarker = "WB_PORTABLE=1"
}
