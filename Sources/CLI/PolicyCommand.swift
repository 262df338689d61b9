import ArgumentParser
import Foundation

struct PolicyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Egress policy: where the devices of a class may connect.",
        subcommands: [Egress.self])

    struct Egress: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Allowed destinations per device class (agents report what their devices talk to).",
            discussion: """
                Rules: ADDRESS[:PORT], CIDR[:PORT] (IPv6 in brackets before a port: [2001:db8::/32]:443), or
                listen:PORT (a port the device may listen on). A device without a class falls under `default`; a
                class without rules has no policy. A destination outside its class's rules raises an
                egress-violation security event (once per destination and hour).
                  bulwark policy egress add camera 203.0.113.0/24:443
                  bulwark device set-class cam-1 camera
                """,
            subcommands: [Add.self, Remove.self, List.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Allow a destination for a class.")
            @OptionGroup var connection: OperatorConnection
            @Argument var deviceClass: String
            @Argument var rule: String
            func run() async throws {
                let (_, object) = try await connection.request(
                    method: "POST", path: "/v1/policies/egress/\(pathSegment(deviceClass))", json: ["rule": rule])
                print(
                    "\(deviceClass): \(((object as? [String: Any])?["rules"] as? [String] ?? []).joined(separator: " "))"
                )
            }
        }

        struct Remove: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Remove a rule from a class.")
            @OptionGroup var connection: OperatorConnection
            @Argument var deviceClass: String
            @Argument var rule: String
            func run() async throws {
                let (_, object) = try await connection.request(
                    method: "POST", path: "/v1/policies/egress/\(pathSegment(deviceClass))/remove",
                    json: ["rule": rule])
                print(
                    "\(deviceClass): \(((object as? [String: Any])?["rules"] as? [String] ?? []).joined(separator: " "))"
                )
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Every class's rules.")
            @OptionGroup var connection: OperatorConnection
            func run() async throws {
                let (_, object) = try await connection.request(method: "GET", path: "/v1/policies/egress")
                for (name, rules) in ((object as? [String: [String]]) ?? [:]).sorted(by: { $0.key < $1.key }) {
                    print("\(name): \(rules.joined(separator: " "))")
                }
            }
        }
    }
}
