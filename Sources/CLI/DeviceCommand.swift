import ArgumentParser
import Foundation

struct DeviceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "device", abstract: "Enroll, list, show and revoke devices.",
        subcommands: [
            Enroll.self, List.self, Show.self, Revoke.self, Release.self, Command.self, SetClass.self, Assign.self,
            Label.self, Send.self, Sign.self,
        ])

    struct Assign: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Assign a target (a signed release) to one device (--none removes it).")
        @OptionGroup var connection: OperatorConnection
        @Argument var id: String
        @Argument var target: String?
        @Flag(help: "Remove the device's own assignment.") var none = false
        func run() async throws {
            try await assign(connection, path: "/v1/devices/\(pathSegment(id))/assignment", target: target, none: none)
        }
    }

    struct SetClass: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-class", abstract: "Put a device in a class (its egress policy); --none takes it out.")
        @OptionGroup var connection: OperatorConnection
        @Argument var id: String
        @Argument var deviceClass: String?
        @Flag(help: "Take the device out of its class.") var none = false
        func run() async throws {
            guard (deviceClass == nil) == none else { throw ValidationError("give a CLASS, or --none") }
            let (_, object) = try await connection.request(
                method: "PUT", path: "/v1/devices/\(pathSegment(id))/class",
                json: ["class": deviceClass.map { $0 as Any } ?? NSNull()])
            print("\(id): class \((object as? [String: Any])?["class"] as? String ?? "none")")
        }
    }

    struct Enroll: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a device certificate from a PKCS#10 CSR (factory provisioning).")
        @OptionGroup var connection: OperatorConnection
        @Option(help: "Device id (1-64 of A-Z a-z 0-9 . _ -).") var id: String
        @Option(help: "CSR file (PEM), signed by the device's key.") var csr: String
        @Option(help: "Validity in days (1-397).") var days: Int = 90
        @Option(help: "Write the certificate here instead of standard output.") var out: String?

        func run() async throws {
            guard let csrData = FileManager.default.contents(atPath: csr) else {
                throw CleanExit.message("bulwark: cannot read the CSR file \(csr)", code: 66)
            }
            let csrText = String(decoding: csrData, as: UTF8.self)
            // A key passed by mistake must never leave this machine.
            guard !csrText.contains("PRIVATE KEY"), csrText.contains("-----BEGIN CERTIFICATE REQUEST-----") else {
                throw CleanExit.message(
                    "bulwark: \(csr) is not a PEM certificate signing request (nothing was sent); make one with "
                        + "`openssl req -new -key DEVICE.key -subj /CN=ID -out DEVICE.csr`", code: 65)
            }
            let (_, object) = try await connection.request(
                method: "POST", path: "/v1/devices", json: ["id": id, "csr": csrText, "days": days])
            guard let response = object as? [String: Any], let pem = response["certificate"] as? String else {
                throw CleanExit.message("bulwark: the hub's answer has no certificate", code: 1)
            }
            if let out {
                try pem.write(toFile: out, atomically: true, encoding: .utf8)
                let serial = response["serial"] as? String ?? "?"
                let notAfter = response["notAfter"] as? String ?? "?"
                print("enrolled \(id): certificate \(out) (serial \(serial), valid until \(notAfter))")
            } else {
                print(pem, terminator: "")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List devices.")
        @OptionGroup var connection: OperatorConnection
        func run() async throws {
            let (_, object) = try await connection.request(method: "GET", path: "/v1/devices")
            for case let device as [String: Any] in object as? [Any] ?? [] {
                let id = device["id"] as? String ?? "?"
                let status = device["status"] as? String ?? "?"
                print("\(id)\t\(status)")
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one device with its certificates.")
        @OptionGroup var connection: OperatorConnection
        @Argument var id: String
        func run() async throws {
            let (_, object) = try await connection.request(method: "GET", path: "/v1/devices/\(pathSegment(id))")
            printJSON(object)
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a device: its next request fails, even on an open connection.")
        @OptionGroup var connection: OperatorConnection
        @Argument var id: String
        func run() async throws {
            let (_, object) = try await connection.request(
                method: "POST", path: "/v1/devices/\(pathSegment(id))/revoke")
            let serials = (object as? [String: Any])?["revokedSerials"] as? [String] ?? []
            print("revoked \(id) (\(serials.count) certificate\(serials.count == 1 ? "" : "s"))")
        }
    }
}

func pathSegment(_ text: String) -> String {
    text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "._-"))) ?? ""
}

struct EventsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events", abstract: "Print recent security events, newest first, as JSON lines.")
    @OptionGroup var connection: OperatorConnection
    @Option var limit: Int = 50
    func run() async throws {
        let (_, object) = try await connection.request(method: "GET", path: "/v1/security-events?limit=\(limit)")
        for event in object as? [Any] ?? [] {
            if let data = try? JSONSerialization.data(withJSONObject: event, options: [.sortedKeys]) {
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }
}
