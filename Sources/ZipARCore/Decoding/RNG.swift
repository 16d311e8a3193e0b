import Foundation

/// The seeded random number generator behind every sampled token (documented in the README):
/// xoshiro256** (Blackman & Vigna) whose 256-bit state is filled from the seed by SplitMix64.
/// `nextUniform()` is (next() >> 11) · 2⁻⁵³ in [0, 1). The same seed gives the same stream on
/// every machine; it is not PyTorch's generator, so sampled (non-greedy) tokens differ from the
/// official code's, while greedy decoding matches it exactly.
public struct RNG {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var z = seed
        func splitmix() -> UInt64 {
            z &+= 0x9E37_79B9_7F4A_7C15
            var r = z
            r = (r ^ (r >> 30)) &* 0xBF58_476D_1CE4_E5B9
            r = (r ^ (r >> 27)) &* 0x94D0_49BB_1331_11EB
            return r ^ (r >> 31)
        }
        s = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    public mutating func next() -> UInt64 {
        let result = rotl(s.1 &* 5, 7) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3
        s.2 ^= t
        s.3 = rotl(s.3, 45)
        return result
    }

    @inline(__always) private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// Uniform double in [0, 1) with 53 random bits.
    public mutating func nextUniform() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// Standard normal (Box-Muller); used only to build random test and benchmark models.
    public mutating func nextNormal() -> Float {
        let u1 = max(nextUniform(), 1e-300), u2 = nextUniform()
        return Float((-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
    }
}
