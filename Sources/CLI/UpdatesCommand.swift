import ArgumentParser
import Foundation

struct UpdatesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "updates", abstract: "Which signed release devices should run (the director half).",
        discussion: """
            A device runs its own assignment (bulwark device assign), else its class's, else the fleet default.
            Targets must be listed in the published targets metadata; devices install only what their own TUF client
            verifies.
            """,
        subcommands: [AssignClass.self, Default.self, Status.self])

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The fleet's updates: per target, devices running it, in trial, refused, rolled back.",
            discussion: "Then one line per device: its committed release, slot, floor and last step. --json: raw.")
        @OptionGroup var connection: OperatorConnection
        @Flag(help: "Print the hub's JSON answer.") var json = false
        func run() async throws {
            let (_, object) = try await connection.request(method: "GET", path: "/v1/updates/status")
            if json { return printJSON(object) }
            let answer = object as? [String: Any] ?? [:]
            print("TARGET                                   RUNNING  TRIAL  REFUSED  ROLLED-BACK")
            for target in answer["targets"] as? [[String: Any]] ?? [] {
                func n(_ key: String) -> String { String(target[key] as? Int ?? 0) }
                let name = target["target"] as? String ?? "?"
                print(
                    name.padding(toLength: max(40, name.count), withPad: " ", startingAt: 0) + " "
                        + [
                            n("running").leftPad(7), n("trial").leftPad(6), n("refused").leftPad(8),
                            n("rolledBack").leftPad(12),
                        ].joined(separator: " "))
            }
            for device in answer["devices"] as? [[String: Any]] ?? [] {
                let reason = (device["reason"] as? String).map { ": \($0)" } ?? ""
                print(
                    "\(device["device"] as? String ?? "?"): \(device["installedVersion"] as? String ?? "nothing installed")"
                        + " (slot \(device["slot"] as? String ?? "-"), floor \(device["floor"] as? Int ?? 0)), last "
                        + "\(device["lastStep"] as? String ?? "-") \(device["stepTarget"] as? String ?? "")\(reason)")
            }
        }
    }

    struct AssignClass: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "assign-class", abstract: "Assign a target to a device class (--none removes it).")
        @OptionGroup var connection: OperatorConnection
        @Argument var deviceClass: String
        @Argument var target: String?
        @Flag(help: "Remove the class's assignment.") var none = false
        func run() async throws {
            try await assign(
                connection, path: "/v1/updates/classes/\(pathSegment(deviceClass))/assignment", target: target,
                none: none)
        }
    }

    struct Default: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Assign the fleet's default target (--none removes it).")
        @OptionGroup var connection: OperatorConnection
        @Argument var target: String?
        @Flag(help: "Remove the default.") var none = false
        func run() async throws {
            try await assign(connection, path: "/v1/updates/default", target: target, none: none)
        }
    }
}

extension String {
    func leftPad(_ width: Int) -> String { String(repeating: " ", count: max(0, width - count)) + self }
}

func assign(_ connection: OperatorConnection, path: String, target: String?, none: Bool) async throws {
    guard (target == nil) == none else { throw ValidationError("give a TARGET, or --none") }
    let (_, object) = try await connection.request(
        method: "PUT", path: path, json: ["target": target.map { $0 as Any } ?? NSNull()])
    let answer = object as? [String: Any]
    print("\(answer?["scope"] as? String ?? "?"): \(answer?["target"] as? String ?? "no target")")
}
