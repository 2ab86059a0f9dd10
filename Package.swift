// swift-tools-version:6.0
// wb — checkpoint-driven debugging and fuzzing workbench for Linux on x86-64.
import PackageDescription

/// C executables built by SwiftPM are linked by swiftc; they are ordinary glibc programs.
func harnessProgram(_ name: String, optimize: Bool = true, flags: [String] = [], libraries: [String] = []) -> Target {
    .executableTarget(
        name: "harness-\(name)",
        dependencies: ["HarnessSupport"],
        path: "harness/programs/\(name)",
        cSettings: [.unsafeFlags([optimize ? "-O2" : "-O0", "-g", "-mavx2", "-pthread"] + flags)],
        linkerSettings: [.linkedLibrary("pthread")] + libraries.map { .linkedLibrary($0) })
}

let package = Package(
    name: "wb",
    products: [
        .executable(name: "wb", targets: ["wb"]),
        // Preloaded into programs `wb run --record` starts; it sits beside wb.
        .library(name: "wbrecord", type: .dynamic, targets: ["WBRecordPreload"]),
        // Preloaded into programs `wb run --ib` starts (the verbs layer and its emulated HCA).
        .library(name: "wbverbs", type: .dynamic, targets: ["WBVerbsPreload"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // C floor: syscall/ptrace shims and the restore stub.
        .target(
            name: "CWBNative",
            path: "native/CWBNative",
            cSettings: [.unsafeFlags(["-O2"])]),
        // The input log format of `wb run --record`, shared by wb and the preload library.
        .target(
            name: "CWBRecord",
            path: "native/CWBRecord",
            cSettings: [.unsafeFlags(["-O2"])]),
        // libwbrecord.so: plain C, no Swift runtime (linked statically, so nothing of it is
        // loaded or initialized in the recorded program).
        .target(
            name: "WBRecordPreload",
            dependencies: ["CWBRecord"],
            path: "native/preload",
            publicHeadersPath: ".",
            cSettings: [.unsafeFlags(["-O2", "-mno-red-zone", "-fvisibility=hidden"])],
            linkerSettings: [.unsafeFlags(["-static-stdlib"])]),
        // libwbverbs.so: plain C over <infiniband/verbs.h>; it stands in front of libibverbs.
        .target(
            name: "WBVerbsPreload",
            path: "native/verbs",
            publicHeadersPath: ".",
            cSettings: [.unsafeFlags(["-O2", "-fvisibility=hidden"])],
            linkerSettings: [.linkedLibrary("pthread"), .unsafeFlags(["-static-stdlib"])]),
        // Unwinding and symbolization over libdwfl; disassembly over capstone.
        .target(
            name: "CWBSymbols",
            dependencies: ["CLibDW", "CCapstone"],
            path: "native/CWBSymbols",
            cSettings: [.unsafeFlags(["-O2"])]),
        // System libraries through pkg-config.
        .systemLibrary(
            name: "CCapstone", path: "native/modulemaps/CCapstone",
            pkgConfig: "capstone", providers: [.apt(["libcapstone-dev"])]),
        .systemLibrary(
            name: "CLibDW", path: "native/modulemaps/CLibDW",
            pkgConfig: "libdw", providers: [.apt(["libdw-dev"])]),
        .systemLibrary(
            name: "CLibUnwindPtrace", path: "native/modulemaps/CLibUnwindPtrace",
            pkgConfig: "libunwind-ptrace", providers: [.apt(["libunwind-dev"])]),
        .systemLibrary(
            name: "CIBVerbs", path: "native/modulemaps/CIBVerbs",
            pkgConfig: "libibverbs", providers: [.apt(["libibverbs-dev"])]),

        // Swift layers, dependencies pointing down.
        .target(name: "WBSystem", dependencies: ["CWBNative"]),
        .target(name: "WBCore", dependencies: ["WBSystem"]),
        .target(name: "WBTrace", dependencies: ["WBCore", "WBSystem", "CWBNative"]),
        .target(name: "WBSymbols", dependencies: ["WBCore", "CWBSymbols"]),
        .target(name: "WBNet", dependencies: ["WBCore", "WBSystem", "CWBNative"]),
        .target(name: "WBCheckpoint", dependencies: ["WBTrace", "WBCore", "WBNet"]),
        .target(name: "WBVerbs", dependencies: ["WBCore", "WBSystem"]),
        .target(name: "WBSet", dependencies: ["WBCore", "WBSystem", "WBRestore", "WBNet", "WBTrace", "WBVerbs"]),
        .target(name: "WBExplore", dependencies: ["WBCore", "WBSystem", "WBRestore", "WBTrace", "WBSymbols", "WBSet", "WBDebug", "WBNet", "CWBNative"]),
        .target(name: "WBCoordinator", dependencies: ["WBCore", "WBSystem", "WBCheckpoint", "WBNet", "WBTrace", "WBSet"]),
        .target(name: "WBFuzz", dependencies: ["WBCore", "WBTrace", "WBRestore", "WBSymbols", "WBNet", "CWBNative"]),
        .target(name: "WBRestore", dependencies: ["WBTrace", "WBCore", "WBNet"]),
        .target(name: "WBTimeline", dependencies: ["CWBRecord", "WBCore", "WBTrace", "WBCheckpoint", "WBRestore", "WBDebug", "WBSymbols"]),
        .target(name: "WBDebug", dependencies: ["WBCore", "WBTrace", "WBRestore", "WBCheckpoint"]),
        .executableTarget(
            name: "wb",
            dependencies: [
                "WBCore", "WBCheckpoint", "WBRestore", "WBNet", "WBSymbols", "WBDebug", "WBFuzz", "WBTimeline", "WBSet", "WBCoordinator", "WBVerbs", "WBExplore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),

        // Target programs for tests, the demo and the benchmarks.
        .target(name: "HarnessSupport", path: "harness/programs/support",
                cSettings: [.unsafeFlags(["-O2", "-g"])]),
        harnessProgram("heap"),
        harnessProgram("threads"),
        harnessProgram("state"),
        // Debugged in tests: built without optimization so every local is visible.
        harnessProgram("service", optimize: false),
        harnessProgram("holder"),
        harnessProgram("events"),
        harnessProgram("strings"),
        // As distributions build programs: a stack overflow ends in __stack_chk_fail.
        harnessProgram("parser", flags: ["-fstack-protector-strong"]),
        harnessProgram("ledger"),
        harnessProgram("pipeline"),
        harnessProgram("family"),
        harnessProgram("segments"),
        harnessProgram("switcher"),
        harnessProgram("fifo"),
        harnessProgram("deleteddir"),
        harnessProgram("sharedtables"),
        harnessProgram("cow"),
        harnessProgram("dispatch"),
        harnessProgram("pty"),
        harnessProgram("fanotify"),
        harnessProgram("aio"),
        harnessProgram("namespaces"),
        harnessProgram("hugetlb"),
        harnessProgram("locks"),
        harnessProgram("deleted"),
        harnessProgram("pidfds"),
        harnessProgram("novdso"),
        harnessProgram("security"),
        harnessProgram("sysvipc"),
        harnessProgram("mqueue"),
        harnessProgram("hardened"),
        harnessProgram("sigio"),
        harnessProgram("numa"),
        harnessProgram("clocks"),
        harnessProgram("sharedfile"),
        harnessProgram("guards"),
        harnessProgram("unixzoo"),
        harnessProgram("netzoo"),
        harnessProgram("transfer"),
        harnessProgram("conns"),
        harnessProgram("rawzoo"),
        harnessProgram("inotify"),
        harnessProgram("resetzoo"),
        harnessProgram("pool"),
        harnessProgram("sums"),
        harnessProgram("checksums"),
        harnessProgram("kvserver", optimize: false),
        harnessProgram("ring"),
        harnessProgram("replica"),
        harnessProgram("twophase"),
        // Linked against libibverbs, run on wb's verbs layer.
        harnessProgram("ibring", libraries: ["ibverbs"]),
        harnessProgram("ibcheck", libraries: ["ibverbs"]),
        // The TCP peer of harness/bench/verbs.
        harnessProgram("tcpperf"),
        // Debugged after a replay: built without optimization so every local is visible.
        harnessProgram("msgserver", optimize: false),

        .testTarget(name: "WBCoreTests", dependencies: ["WBCore"]),
        .testTarget(name: "WBTraceTests", dependencies: ["WBTrace"]),
        .testTarget(name: "SystemLibraryTests",
                    dependencies: ["CCapstone", "CLibDW", "CLibUnwindPtrace", "CIBVerbs"],
                    // libunwind exposes its accessor table as a mutable C global.
                    swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(name: "EndToEndTests", dependencies: ["WBCore", "WBSystem", "WBTrace"], exclude: ["Golden"]),
    ]
)
