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
        subcommands: [AssignClass.self, Default.self])

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

func assign(_ connection: OperatorConnection, path: String, target: String?, none: Bool) async throws {
    guard (target == nil) == none else { throw ValidationError("give a TARGET, or --none") }
    let (_, object) = try await connection.request(
        method: "PUT", path: path, json: ["target": target.map { $0 as Any } ?? NSNull()])
    let answer = object as? [String: Any]
    print("\(answer?["scope"] as? String ?? "?"): \(answer?["target"] as? String ?? "no target")")
}
