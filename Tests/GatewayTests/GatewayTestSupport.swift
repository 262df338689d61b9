import Core
import Crypto
import Foundation
import Gateway
import Testing

/// One case of the adversarial corpus (see Fixtures/README.md).
struct CorpusCase: Decodable, Sendable, CustomTestStringConvertible {
    struct Generate: Decodable, Sendable {
        let prefix: String
        let `repeat`: String
        let count: Int
        let suffix: String
    }
    let file: String?
    let name: String
    let generate: Generate?
    let status: Int
    let stage: String?
    let note: String

    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/adversarial")

    static func all() throws -> [CorpusCase] {
        try JSONDecoder().decode(
            [CorpusCase].self, from: Data(contentsOf: directory.appendingPathComponent("manifest.json")))
    }

    func body() throws -> [UInt8] {
        if let file { return Array(try Data(contentsOf: Self.directory.appendingPathComponent(file))) }
        guard let generate else { return [] }
        return Array(
            (generate.prefix + String(repeating: generate.repeat, count: generate.count) + generate.suffix).utf8)
    }

    var testDescription: String { name }
}

func fixture(_ name: String) throws -> [UInt8] {
    Array(
        try Data(
            contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
                "Fixtures/" + name)))
}

/// A fixed clock for pipeline tests.
func time(_ seconds: Double, unix: Int64 = 1_796_000_000) -> GatewayTime {
    GatewayTime(monotonicNanos: Int64(seconds * 1e9), unixSeconds: unix + Int64(seconds))
}
