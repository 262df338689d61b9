import Foundation
public import Gateway
public import NIOSSL

/// A closed-loop HTTP load generator over mutual TLS: `connections` keep-alive connections, each sending the next
/// request as soon as the previous answer arrived, for `duration`. Bounded in time and in connections.
public enum LoadGenerator {
    public struct Result: Sendable {
        public var successes = 0
        public var failures = 0
        public var elapsed: Duration = .zero
        /// Latencies of successful requests, in nanoseconds, sorted.
        public var latencies: [Int64] = []

        public init() {}

        public var requestsPerSecond: Double {
            Double(successes) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        }

        public func percentile(_ p: Double) -> Double {
            guard !latencies.isEmpty else { return .nan }
            let index = min(latencies.count - 1, Int((Double(latencies.count) * p / 100).rounded(.up)) - 1)
            return Double(latencies[max(0, index)]) / 1e6
        }
    }

    public static func run(
        host: String, port: Int, tls: TLSConfiguration, connections: Int, duration: Duration,
        method: String = "POST", path: String, headers: [(String, String)], body: [UInt8],
        expectedStatus: Int, signer: MessageSigner? = nil, session: Bool = false
    ) async -> Result {
        precondition((1...10_000).contains(connections), "connections must be between 1 and 10000")
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + duration
        var total = await withTaskGroup(of: Result.self) { group in
            for _ in 0..<connections {
                group.addTask {
                    var result = Result()
                    result.latencies.reserveCapacity(16_384)
                    do {
                        try await HTTPSClient.withConnection(host: host, port: port, tls: tls) { connection in
                            // One ECDSA-signed request per connection for its session key, then HMAC (`session`).
                            var signer = signer
                            if session, let ecdsa = signer { signer = try await connection.openSession(signer: ecdsa) }
                            while clock.now < deadline {
                                let sent = clock.now
                                let response = try await connection.send(
                                    method: method, path: path, headers: headers, body: body, signer: signer)
                                if response.status == expectedStatus {
                                    let latency = clock.now - sent
                                    result.successes += 1
                                    result.latencies.append(
                                        latency.components.seconds * 1_000_000_000
                                            + latency.components.attoseconds / 1_000_000_000)
                                } else {
                                    result.failures += 1
                                }
                            }
                        }
                    } catch {
                        result.failures += 1
                    }
                    return result
                }
            }
            var merged = Result()
            for await part in group {
                merged.successes += part.successes
                merged.failures += part.failures
                merged.latencies += part.latencies
            }
            return merged
        }
        total.elapsed = clock.now - start
        total.latencies.sort()
        return total
    }
}
