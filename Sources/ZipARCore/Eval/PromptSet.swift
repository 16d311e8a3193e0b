import Foundation

/// One evaluation prompt and the seed every decoding mode uses to generate it.
public struct EvalPrompt: Hashable, Sendable {
    public var index: Int
    public var prompt: ShapePrompt
    public var seed: UInt64
}

/// The fixed, seeded prompt set of `zipar eval`.
///
/// Prompts come in blocks of 12 kinds: 2 single objects without background, 2 single objects on a
/// background, and each of the 4 relations once without and once with a background. So a third of
/// the prompts name one object, half name a background, and every relation is equally frequent
/// (exactly so when n is a multiple of 12). Colours, shapes and backgrounds are dealt from
/// shuffled decks, so each appears about equally often. Prompt i depends only on the set seed and
/// the prompts before it: a smaller set is a prefix of a larger one.
public enum PromptSet {
    public static let defaultCount = 200

    /// The kinds of one block: (relation or nil for a single object, with a background).
    static let blockKinds: [(Relation?, Bool)] =
        [(nil, false), (nil, true)] + Relation.allCases.map { ($0, false) } +
        [(nil, false), (nil, true)] + Relation.allCases.map { ($0, true) }

    public static func make(count: Int = defaultCount, seed: UInt64 = 0) -> [EvalPrompt] {
        var rng = RNG(seed: seed)
        var colors = Deck(PaletteColor.allCases), shapes = Deck(ShapeKind.allCases), backgrounds = Deck(PaletteColor.allCases)
        var result: [EvalPrompt] = []
        for i in 0..<count {
            let (relation, withBackground) = blockKinds[i % blockKinds.count]
            var objects = [ShapeObject(colors.draw(&rng), shapes.draw(&rng))]
            if relation != nil {
                // The second object must differ from the first in colour or shape.
                let first = objects[0]
                let color = colors.draw(&rng), shape = shapes.draw(&rng, avoiding: color == first.color ? [first.shape] : [])
                objects.append(ShapeObject(color, shape))
            }
            let background = withBackground ? backgrounds.draw(&rng, avoiding: objects.map(\.color)) : nil
            // Valid by construction; `try!` documents that the set can never hold an illegal prompt.
            let prompt = try! ShapePrompt(objects: objects, relation: relation, background: background)
            // Generation seeds come from the same stream, fixed by the set seed, and short enough to
            // retype into `zipar generate --seed`.
            result.append(EvalPrompt(index: i, prompt: prompt, seed: rng.next() % 1_000_000))
        }
        return result
    }

    /// A shuffled deck that is refilled and reshuffled when empty: every card comes up equally often.
    struct Deck<T: Equatable> {
        let cards: [T]
        var pile: [T] = []
        init(_ cards: [T]) { self.cards = cards }

        /// The next card not in `avoiding`; skipped cards stay at the front of the pile for next time.
        mutating func draw(_ rng: inout RNG, avoiding: [T] = []) -> T {
            if pile.allSatisfy({ avoiding.contains($0) }) { refill(&rng) }
            let i = pile.firstIndex { !avoiding.contains($0) }!
            return pile.remove(at: i)
        }

        private mutating func refill(_ rng: inout RNG) {
            var fresh = cards
            // Fisher-Yates with the seeded RNG.
            for i in stride(from: fresh.count - 1, to: 0, by: -1) {
                let j = min(i, Int(rng.nextUniform() * Double(i + 1)))
                fresh.swapAt(i, j)
            }
            pile += fresh
        }
    }
}
