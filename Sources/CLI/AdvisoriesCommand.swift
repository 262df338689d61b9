import Advisories
import ArgumentParser
import Foundation
import Store
import ZIPFoundation

/// `bulwark advisories import | waive | waivers | rescan`: the vulnerability gate's advisory database and the
/// operator's decisions over it.
struct AdvisoriesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "advisories", abstract: "OSV advisories for the vulnerability gate: import, waive, rescan.",
        discussion: """
            The gate (`bulwark release publish`) matches a release's CycloneDX SBOM against OSV advisories imported
            offline, on the hub's machine, from osv.dev's per-ecosystem exports:
              curl -O https://osv-vulnerabilities.storage.googleapis.com/PyPI/all.zip
              bulwark advisories import all.zip --data ./bulwark-data
            then `bulwark advisories rescan` names the released versions and devices the new advisories reach.
            """,
        subcommands: [Import.self, Waive.self, Waivers.self, Rescan.self])

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import OSV records (a directory of .json files, or an osv.dev all.zip) in one transaction.")
        @Argument(help: "A directory of OSV JSON records, or a ZIP of them.") var source: String
        @Option(help: "The hub's data directory (the database is DATA/advisories.db).") var data = "./bulwark-data"
        @Option(help: "The advisory database file (overrides --data; the hub's advisories.database).")
        var database: String?
        @Flag(help: "Import the valid records and report the malformed ones (default: refuse the whole import).")
        var skipInvalid = false

        /// One record file may not be larger than this (osv.dev's largest are a few hundred KiB), nor all of them
        /// together larger than the second (osv.dev's whole export is under 2 GiB uncompressed).
        static let maximumRecordBytes = 8 * 1024 * 1024
        static let maximumTotalBytes = 4 * 1024 * 1024 * 1024

        func run() async throws {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: source, isDirectory: &isDirectory) else {
                throw CleanExit.message("bulwark: \(source) does not exist", code: 66)
            }
            var records: [(record: OSVRecord, body: [UInt8])] = []
            var invalid: [String] = []
            let accept = { (name: String, bytes: [UInt8]) throws in
                do {
                    records.append((try OSVRecord(json: bytes), bytes))
                } catch {
                    invalid.append("\(name): \(error)")
                    if !skipInvalid {
                        throw CleanExit.message(
                            "bulwark: \(name): \(error) (nothing was imported; --skip-invalid imports the rest)",
                            code: 65)
                    }
                }
            }
            if isDirectory.boolValue {
                try Self.readDirectory(source, accept)
            } else {
                try Self.readZIP(source, accept)
            }
            guard !records.isEmpty else {
                throw CleanExit.message("bulwark: \(source) holds no OSV records (*.json)", code: 65)
            }
            let path = database ?? data + "/advisories.db"
            let opened: AdvisoryDatabase
            do { opened = try AdvisoryDatabase(path: path) } catch {
                throw CleanExit.message("bulwark: \(error)", code: 73)
            }
            let result = try opened.importRecords(
                records, at: Date(), source: URL(fileURLWithPath: source).lastPathComponent, skipped: invalid.count)
            let summary = try opened.summary()
            print(
                "imported \(records.count) records from \(source): \(result.added) new, \(result.replaced) updated, "
                    + "\(result.unchanged) unchanged; \(summary.records) in \(path)")
            if !invalid.isEmpty {
                FileHandle.standardError.write(Data("skipped \(invalid.count) malformed records:\n".utf8))
                for line in invalid.prefix(20) { FileHandle.standardError.write(Data("  \(line)\n".utf8)) }
            }
        }

        static func readDirectory(_ root: String, _ accept: (String, [UInt8]) throws -> Void) throws {
            guard let walker = FileManager.default.enumerator(atPath: root) else {
                throw CleanExit.message("bulwark: cannot read \(root)", code: 66)
            }
            while let relative = walker.nextObject() as? String {
                guard relative.hasSuffix(".json") else { continue }
                let path = root + "/" + relative
                let attributes = try? FileManager.default.attributesOfItem(atPath: path)
                guard attributes?[.type] as? FileAttributeType == .typeRegular else { continue }
                guard (attributes?[.size] as? Int ?? 0) <= maximumRecordBytes,
                    let data = FileManager.default.contents(atPath: path)
                else {
                    try accept(relative, [])
                    continue
                }
                try accept(relative, Array(data))
            }
        }

        /// Reads every `*.json` entry of a ZIP into memory, each bounded (whatever its header claims: a ZIP bomb is
        /// stopped by the bytes actually inflated) and its CRC-32 checked.
        static func readZIP(_ path: String, _ accept: (String, [UInt8]) throws -> Void) throws {
            let archive: Archive
            do { archive = try Archive(url: URL(fileURLWithPath: path), accessMode: .read) } catch {
                throw CleanExit.message("bulwark: \(path) is neither a directory nor a readable ZIP", code: 65)
            }
            struct TooLarge: Error {}
            var total = 0
            for entry in archive where entry.type == .file && entry.path.hasSuffix(".json") {
                var bytes: [UInt8] = []
                do {
                    _ = try archive.extract(entry, skipCRC32: false) { chunk in
                        guard bytes.count + chunk.count <= maximumRecordBytes,
                            total + bytes.count + chunk.count <= maximumTotalBytes
                        else { throw TooLarge() }
                        bytes.append(contentsOf: chunk)
                    }
                    total += bytes.count
                } catch is TooLarge {
                    throw CleanExit.message(
                        "bulwark: \(path): \(entry.path) inflates beyond \(maximumRecordBytes) bytes (or the archive "
                            + "beyond \(maximumTotalBytes))", code: 65)
                } catch {
                    throw CleanExit.message("bulwark: \(path): \(entry.path) cannot be read: \(error)", code: 65)
                }
                try accept(entry.path, bytes)
            }
        }
    }

    struct Waive: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Let releases with a package pass an advisory until a date (audited, with your reason).")
        @OptionGroup var connection: OperatorConnection
        @Argument(help: "The OSV id (or an alias such as a CVE id).") var advisory: String
        @Option(help: "The package URL; without @version it covers every version.") var purl: String
        @Option(help: "Why (kept in the audit log and every gate report that uses it).") var reason: String
        @Option(help: "Until when: YYYY-MM-DD (to the end of that day, UTC) or an RFC 3339 time, at most a year ahead.")
        var until: String

        func run() async throws {
            guard let date = Self.parseDate(until) else {
                throw CleanExit.message("bulwark: --until must be YYYY-MM-DD or an RFC 3339 time", code: 64)
            }
            let (_, object) = try await connection.request(
                method: "POST", path: "/v1/advisories/waivers",
                json: [
                    "advisory": advisory, "purl": purl, "reason": reason,
                    "until": Int64(date.timeIntervalSince1970),
                ])
            printJSON(object)
        }

        static func parseDate(_ text: String) -> Date? {
            let internet = ISO8601DateFormatter()
            if let date = internet.date(from: text) { return date }
            let day = ISO8601DateFormatter()
            day.formatOptions = [.withFullDate]
            // A day is waived to its end: the next midnight, exclusive.
            return day.date(from: text)?.addingTimeInterval(86400)
        }
    }

    struct Waivers: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the waivers, active and expired.")
        @OptionGroup var connection: OperatorConnection
        func run() async throws {
            let (_, object) = try await connection.request(method: "GET", path: "/v1/advisories/waivers")
            printJSON(object)
        }
    }

    struct Rescan: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-match every released SBOM against today's advisories; exit 3 when a device runs one that "
                + "would now be blocked.")
        @OptionGroup var connection: OperatorConnection
        func run() async throws {
            let (_, object) = try await connection.request(method: "POST", path: "/v1/advisories/rescan")
            let result = object as? [String: Any] ?? [:]
            for release in result["releases"] as? [[String: Any]] ?? [] {
                let blocking = (release["findings"] as? [[String: Any]] ?? []).filter {
                    $0["blocking"] as? Bool == true
                }
                let devices = release["devices"] as? [String] ?? []
                let name = "\(release["target"] ?? "?") \(release["version"] ?? "")"
                if blocking.isEmpty {
                    print("\(name): clear (\(devices.count) devices)")
                } else {
                    let advisories = blocking.map { "\($0["advisory"] ?? "?") (\($0["severity"] ?? "?"))" }
                    print(
                        "\(name): \(advisories.joined(separator: ", ")) on \(devices.count) devices"
                            + (devices.isEmpty ? "" : ": " + devices.prefix(50).joined(separator: " ")))
                }
            }
            for target in result["ungated"] as? [[String: Any]] ?? [] {
                let devices = target["devices"] as? [String] ?? []
                let version = target["version"] as? String ?? ""
                print(
                    "\(target["target"] ?? "?")\(version.isEmpty ? "" : " " + version): never passed the gate, on "
                        + "\(devices.count) devices"
                        + (devices.isEmpty ? "" : ": " + devices.prefix(50).joined(separator: " ")))
            }
            if result["deployedBlocking"] as? Bool == true {
                throw CleanExit.message(
                    "bulwark: devices run releases with advisories at or above the hub's release.blockSeverity",
                    code: 3)
            }
        }
    }
}
