import Core
import Foundation
import Gateway
import Logging
import Store

/// What the hub does with an agent's connection report (`devices/<id>/events/connections`, or the same message type
/// over HTTPS): it keeps the destinations the device talks to and the ports it listens on (first and last seen, in
/// how many reports), checks them against the egress policy of the device's class (`bulwark policy egress`; a device
/// without a class falls under `default`; a class without rules has no policy), and raises an `egress-violation`
/// security event for each destination outside it, once per destination and hour (one event per report that names
/// destinations new this hour). With
/// `gateway.quarantine.egress` set, violations count toward the device's quarantine.
struct EgressMonitor: Sendable {
    static let messageType = "connections"
    static let defaultClass = "default"
    let store: any HubStore
    let gateway: GatewayPipeline
    let recorder: GatewayRecorder
    let reported = OncePerWindow()

    func observe(_ device: DeviceID, body: [UInt8], correlationID: String) async {
        let destinations = Self.destinations(body)
        do {
            try await store.recordDestinations(
                device, destinations.map { ($0.listening, $0.proto, $0.address, $0.port) }, at: Date())
            let deviceClass = try await store.deviceClass(device) ?? Self.defaultClass
            let rules = (try await store.egressRules()[deviceClass] ?? []).compactMap { try? EgressRule($0) }
            let violations = EgressRule.violations(destinations, rules: rules)
            guard !violations.isEmpty else { return }
            // One offence per report. Each destination is audited once per device and hour: a report naming
            // destinations not seen outside the policy this hour raises one event naming those (the first eight and
            // the count), so a device cannot turn its reports, or one report of many destinations, into an audit
            // flood.
            let until = gateway.egressViolation(device, now: .now())
            let hour = Int64(Date().timeIntervalSince1970) / 3600
            let fresh = violations.filter { reported.first(device.rawValue + " " + $0.description, now: hour) }
            guard !fresh.isEmpty || until != nil else { return }
            let listed = fresh.isEmpty ? violations : fresh
            let named = listed.prefix(8).map(\.description).joined(separator: ", ")
            await recorder.record(
                Refusal(
                    problem: .forbidden, stage: .authorization,
                    detail: "\(violations.count) destination(s) outside the egress policy of class \(deviceClass)"
                        + (fresh.isEmpty ? ": " : ", \(fresh.count) new this hour: ") + named
                        + (listed.count > 8 ? ", …" : ""),
                    auditKind: fresh.isEmpty ? nil : "egress-violation", quarantinedUntil: until),
                identity: Identity.device(device).uri, source: nil, correlationID: correlationID,
                what: "connection report")
        } catch {
            recorder.logger.error(
                "connection report not recorded",
                metadata: ["device": .string(device.rawValue), "error": .string("\(error)")])
        }
    }

    /// The report's `established` and `listening` lists (the built-in schema has checked their shape).
    static func destinations(_ body: [UInt8]) -> [Destination] {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else { return [] }
        var destinations: [Destination] = []
        for (key, listening) in [("established", false), ("listening", true)] {
            for entry in object[key] as? [[String: Any]] ?? [] {
                // Addresses are IP literals (what the kernel holds); anything else is not recorded.
                guard let proto = entry["proto"] as? String, let address = entry["address"] as? String,
                    let port = entry["port"] as? Int, EgressRule.isAddress(address)
                else { continue }
                destinations.append(Destination(listening: listening, proto: proto, address: address, port: port))
            }
        }
        return destinations
    }
}
