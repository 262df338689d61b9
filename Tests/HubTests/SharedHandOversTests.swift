import Testing

@testable import Hub

/// The order of session saves around shared-subscription hand-overs (`SharedHandOvers`), without a broker or store.
@Suite struct SharedHandOversTests {
    static func handOvers(_ edges: [String: Set<String>]) -> SharedHandOvers {
        var handOvers = SharedHandOvers()
        handOvers.record(edges)
        return handOvers
    }

    /// An acknowledgement waits for where the message went, in turn, and no further; a cycle ends.
    @Test func aSaveFollowsTheMessageOn() {
        let handOvers = Self.handOvers(["a": ["b"], "b": ["c"], "x": ["y"], "c": ["a"]])
        #expect(handOvers.following(["a"]) == ["a", "b", "c"])
        #expect(handOvers.following(["y"]) == ["y"])
        #expect(handOvers.following(["x", "q"]) == ["x", "y", "q"])
        #expect(SharedHandOvers().following(["a"]) == ["a"])
    }

    /// A hand-over is kept while a session not saved since can be reached from its receiver, through saved ones.
    @Test func aHandOverIsForgottenOnceWhereItLedIsSaved() {
        var handOvers = Self.handOvers(["a": ["b"], "b": ["c"], "x": ["y", "z"], "p": ["q"]])
        handOvers.forget { ["c", "z", "p"].contains($0) }
        #expect(handOvers.edges == ["a": ["b"], "b": ["c"], "x": ["z"]], "a→b→c kept whole; p's receiver is saved")
        handOvers.forget { _ in false }
        #expect(handOvers.edges.isEmpty)
    }

    /// Sessions a hand-over joins (either way, through any session, even one not written now) share a transaction,
    /// beyond the bounds if need be; the rest fill transactions up to the bounds, in the order given.
    @Test func joinedSessionsShareATransaction() {
        let handOvers = Self.handOvers(["a": ["b"], "c": ["b"], "m": ["n"], "n": ["o"]])
        let keys = ["a", "x", "c", "y", "z", "m", "o"]
        #expect(
            handOvers.transactions(keys, size: { _ in 1 }, perTransaction: 2)
                == [["a", "c"], ["x", "y"], ["z"], ["m", "o"]], "a, c via b; m, o via n, which is not written")
        #expect(
            handOvers.transactions(keys, size: { _ in 1 }, perTransaction: 3)
                == [["a", "c", "x"], ["y", "z"], ["m", "o"]])
        // By bytes: a session over the bound goes alone, and a group too big stays whole.
        let sizes = ["a": 5, "c": 5, "x": 20, "y": 1, "z": 1, "m": 1, "o": 1]
        #expect(
            handOvers.transactions(keys, size: { sizes[$0]! }, perTransaction: 100, bytesPerTransaction: 8)
                == [["a", "c"], ["x"], ["y", "z", "m", "o"]])
        #expect(
            SharedHandOvers().transactions(["a", "b", "c"], size: { _ in 1 }, perTransaction: 2)
                == [["a", "b"], ["c"]])
    }
}
