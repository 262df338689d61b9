import ArgumentParser
import Foundation
import HubClient

/// Where the operator API is and which credential to present: flags, then `BULWARK_*` environment variables, then
/// the first operator credential the hub wrote into `./bulwark-data/operators/`.
struct OperatorConnection: ParsableArguments {
    @Option(help: "Operator API address (env BULWARK_HUB). Default https://127.0.0.1:8444")
    var hub: String?

    @Option(help: "Directory with <name>.crt, <name>.key and ca.crt (env BULWARK_CREDENTIALS).")
    var credentials: String?

    @Option(
        name: .customLong("as"),
        help: "Operator name inside the credentials directory (env BULWARK_OPERATOR). Default admin")
    var operatorName: String?

    @Option(help: "Operator certificate file (env BULWARK_CERT); overrides --credentials.")
    var cert: String?

    @Option(help: "Operator key file (env BULWARK_KEY).")
    var key: String?

    @Option(help: "CA certificate file (env BULWARK_CACERT).")
    var cacert: String?

    func request(method: String, path: String, json: [String: Any]? = nil, raw: [UInt8]? = nil) async throws -> (
        Int, Any?
    ) {
        let environment = ProcessInfo.processInfo.environment
        let url = hub ?? environment["BULWARK_HUB"] ?? "https://127.0.0.1:8444"
        guard let components = URLComponents(string: url), components.scheme == "https", let host = components.host
        else { throw CleanExit.message("bulwark: --hub must be an https:// URL", code: 64) }
        let directory = credentials ?? environment["BULWARK_CREDENTIALS"] ?? "./bulwark-data/operators"
        let name = operatorName ?? environment["BULWARK_OPERATOR"] ?? "admin"
        let credentials: ClientCredentials
        do {
            credentials = try ClientCredentials(
                certificateFile: cert ?? environment["BULWARK_CERT"] ?? "\(directory)/\(name).crt",
                keyFile: key ?? environment["BULWARK_KEY"] ?? "\(directory)/\(name).key",
                caFile: cacert ?? environment["BULWARK_CACERT"] ?? "\(directory)/ca.crt")
        } catch {
            throw CleanExit.message(
                "bulwark: \(error) (pass --credentials DIR or --cert/--key/--cacert, or run from the hub's directory)",
                code: 66)
        }
        let body = try raw ?? json.map { try JSONSerialization.data(withJSONObject: $0) }.map { [UInt8]($0) } ?? []
        let result: HTTPResult
        do {
            result = try await HTTPSClient.request(
                host: host, port: components.port ?? 443, tls: try credentials.tlsConfiguration(), method: method,
                path: path, headers: json == nil && raw == nil ? [] : [("Content-Type", "application/json")], body: body
            )
        } catch {
            throw CleanExit.message("bulwark: cannot reach the hub at \(url): \(error)", code: 69)
        }
        let object = try? JSONSerialization.jsonObject(with: Data(result.body))
        guard (200..<300).contains(result.status) else {
            let dictionary = object as? [String: Any]
            let code = dictionary?["error"] as? String ?? "error"
            let message = dictionary?["message"] as? String
            let correlation = dictionary?["correlationId"] as? String ?? "-"
            throw CleanExit.message(
                "bulwark: hub refused (\(result.status) \(code))\(message.map { ": " + $0 } ?? "") "
                    + "[correlation id \(correlation)]", code: 1)
        }
        return (result.status, object)
    }
}

func printJSON(_ object: Any?) {
    guard let object,
        let data = try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    else { return }
    print(String(decoding: data, as: UTF8.self))
}
