import Core
import Foundation
import Gateway
import Logging
import Store

/// The device events the hub acts on besides storing them: connection reports (`EgressMonitor`) and update reports
/// (`UpdateReports`), by message type.
struct DeviceEvents: Sendable {
    let egress: EgressMonitor
    let updates: UpdateReports
    /// When each device's telemetry arrived and when it was refused (for staged rollouts).
    var signals = DeviceSignals()

    static func observed(_ messageType: String?) -> Bool {
        messageType == EgressMonitor.messageType || messageType == UpdateReports.messageType
    }

    func observe(_ device: DeviceID, messageType: String?, body: [UInt8], correlationID: String) async {
        switch messageType {
        case EgressMonitor.messageType?: await egress.observe(device, body: body, correlationID: correlationID)
        case UpdateReports.messageType?: await updates.observe(device, body: body, correlationID: correlationID)
        default: break
        }
    }
}

/// What the hub does with an agent's update report (`devices/<id>/events/update`, validated by the built-in schema
/// `update`): it keeps the device's update state (the committed release, slot, floor, the last step and why) for
/// `bulwark device show` and `bulwark updates status`, and audits every outcome (`update-committed`,
/// `update-rolled-back`, `update-refused`, `slot-tampered`).
struct UpdateReports: Sendable {
    static let messageType = "update"
    static let steps = [
        "checking", "downloading", "installed", "trial", "committed", "rolled-back", "refused", "slot-tampered",
    ]
    static let audited = ["committed", "rolled-back", "refused", "slot-tampered"]
    let store: any HubStore
    let logger: Logger
    let audited = OncePerWindow()

    func observe(_ device: DeviceID, body: [UInt8], correlationID: String) async {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
            let step = object["step"] as? String
        else { return }
        // What a device says is shown to operators and written to the audit log: printable ASCII only, so a report
        // cannot forge audit lines or drive an operator's terminal.
        func text(_ key: String, _ limit: Int) -> String? {
            (object[key] as? String).map { MessageSignatureProfile.printable($0, limit: limit) }
        }
        let target = text("target", 255)
        let reason = text("reason", 512)
        let state = DeviceUpdateState(
            deviceID: device, installedTarget: text("installed", 255), installedVersion: text("installedVersion", 64),
            slot: object["active"] as? String, floor: object["floor"] as? Int ?? 0, lastStep: step, stepTarget: target,
            reason: reason, sequence: (object["sequence"] as? NSNumber)?.int64Value ?? 0, updatedAt: Date())
        do {
            try await store.recordUpdateState(state)
            // One audit record per device, step, target and reason an hour: a device repeating a report (or a
            // compromised one) cannot flood the log.
            let key = "\(device.rawValue) \(step) \(target ?? "") \(reason ?? "")"
            if Self.audited.contains(step), audited.first(key, now: Int64(Date().timeIntervalSince1970) / 3600) {
                let kind = step == "slot-tampered" ? step : "update-\(step)"
                let what = [target, text("version", 64).map { "(\($0))" }].compactMap { $0 }
                    .joined(separator: " ")
                try await store.recordSecurityEvent(
                    SecurityEvent(
                        at: Date(), kind: kind, identity: Identity.device(device).uri, correlationID: correlationID,
                        detail: "\(step)\(what.isEmpty ? "" : " " + what)\(reason.map { ": \($0)" } ?? "")"))
            }
        } catch {
            logger.error(
                "update report not recorded",
                metadata: ["device": .string(device.rawValue), "error": .string("\(error)")])
        }
    }

    /// `update`: the built-in schema of the agent's update reports.
    static let schema =
        #"{"type":"object","required":["step","floor"],"additionalProperties":false,"properties":{"step":{"enum":["checking","downloading","installed","trial","committed","rolled-back","refused","slot-tampered"]},"floor":{"type":"integer","minimum":0},"target":{"type":"string","maxLength":255},"version":{"type":"string","maxLength":64},"securityVersion":{"type":"integer","minimum":0},"slot":{"enum":["a","b"]},"active":{"enum":["a","b"]},"installed":{"type":"string","maxLength":255},"installedVersion":{"type":"string","maxLength":64},"reason":{"type":"string","maxLength":512},"received":{"type":"integer","minimum":0},"total":{"type":"integer","minimum":0},"sequence":{"type":"integer","minimum":0}}}"#
}
