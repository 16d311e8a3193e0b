// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "zipar",
    products: [
        .executable(name: "zipar", targets: ["zipar"]),
        .library(name: "ZipARCore", targets: ["ZipARCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // System libraries from Debian (-dev packages); flags come from pkg-config.
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CJPEG", pkgConfig: "libjpeg", providers: [.apt(["libjpeg-dev"])]),
        // libpng/libjpeg calls whose error handling needs setjmp (Swift cannot call it).
        .target(name: "CImageIO", dependencies: ["CPNG", "CJPEG"]),
        // Hot numeric kernels in C: AVX2/FMA paths behind a runtime CPU check, portable fallbacks.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]),
        .target(
            name: "ZipARCore",
            dependencies: ["COpenBLAS", "CImageIO", "CKernels"],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .executableTarget(
            name: "zipar",
            dependencies: ["ZipARCore", "CKernels", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .testTarget(
            name: "ZipARCoreTests",
            dependencies: ["ZipARCore"],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
    ]
)
