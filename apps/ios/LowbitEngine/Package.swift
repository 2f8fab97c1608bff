// swift-tools-version:5.9
// LowbitEngine: Swift over lowbit's native engine (the C API of include/lowbit/engine.h) for iOS apps.
//
// What it links, all from outside this repository (see ../README.md):
//   dist/       the output of `lowbit package --config lowbit-package.json -o dist/` (device iphone),
//               here or a symlink to it: include/lowbit/engine.h, lib/libmodel_iphone.a
//               (every model + the engine), bundle/ (app config and weights)
//   tvm/lib/    the TVM runtime built for iOS from your TVM source tree: libtvm_runtime.a,
//               libtvm_runtime_metal.a, libtvm_ffi_static.a
// LOWBIT_DIST and LOWBIT_TVM_IOS_LIB (environment, absolute paths) override the two folders for
// `swift build` / `xcodebuild` runs; Xcode's GUI reads the defaults.

import PackageDescription

let packageDir = Context.packageDirectory
let distDir = Context.environment["LOWBIT_DIST"] ?? "\(packageDir)/dist"
let tvmLibDir = Context.environment["LOWBIT_TVM_IOS_LIB"] ?? "\(packageDir)/tvm/lib"

// Every archive is force-loaded: the model libraries register themselves under their
// system_lib_prefix, the Metal runtime its kernel loader, and the TVM runtime its VM builtins and
// KV cache, all from static initializers that nothing in the app references. A plain `-l` link
// keeps only archive members that resolve an undefined symbol, so these would be dropped and the
// engine would find no model ("List of available model libs packaged: []" in MLC's words).
let forceLoaded = [
    "\(distDir)/lib/libmodel_iphone.a",
    "\(tvmLibDir)/libtvm_runtime.a",
    "\(tvmLibDir)/libtvm_runtime_metal.a",
    "\(tvmLibDir)/libtvm_ffi_static.a",
]

let package = Package(
    name: "LowbitEngine",
    platforms: [.iOS(.v14), .macOS(.v11)],
    products: [
        .library(name: "LowbitEngine", targets: ["LowbitEngine"]),
    ],
    targets: [
        // The C API. The module map names dist/include/lowbit/engine.h, the header `lowbit package`
        // copied next to the archive it built, so header and engine always come from one run.
        .systemLibrary(name: "CLowbit", path: "Sources/CLowbit"),
        .target(
            name: "LowbitEngine",
            dependencies: ["CLowbit"],
            path: "Sources/LowbitEngine",
            linkerSettings: [
                .linkedLibrary("c++"),
                .linkedFramework("Metal"),
                .linkedFramework("Foundation"),
                // -Xlinker works both when swiftc links (`swift build`) and when clang does (Xcode).
                // iOS only: the archives are arm64 iOS (macOS is listed so that `swift build`
                // type-checks the Swift sources on a Mac).
                .unsafeFlags(forceLoaded.flatMap { ["-Xlinker", "-force_load", "-Xlinker", $0] },
                             .when(platforms: [.iOS])),
            ]
        ),
    ]
)
