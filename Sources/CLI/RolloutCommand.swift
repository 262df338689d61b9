import ArgumentParser
import Foundation

/// `bulwark rollout`: a release to a growing share of the fleet, stage by stage, stopping by itself.
struct RolloutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollout", abstract: "Staged rollouts that pause themselves when devices fail.",
        discussion: """
            Devices are put into cohorts by a stable hash of their id. A stage advances after its soak time when no
            more than --max-failure-rate percent of its cohort failed. It pauses by itself when more did. A device
            fails when it rolls the release back or refuses it, and also on two signals the hub sees itself: the
            device went silent after it committed, or its gateway refusals jumped after it committed. A device's own
            assignment and its class's win over the rollout.
            """,
        subcommands: [Start.self, Status.self, Pause.self, Resume.self, Abort.self])

    /// `10m`, `90s`, `2h`, `1d`, or seconds.
    static func seconds(_ text: String) -> Double? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        if let unit = text.last, let factor = units[unit] { return Double(text.dropLast()).map { $0 * factor } }
        return Double(text)
    }

    static func describe(_ object: Any) -> String {
        let rollout = object as? [String: Any] ?? [:]
        let stages = (rollout["stages"] as? [Int] ?? []).map(String.init).joined(separator: ",")
        var line =
            "rollout \(rollout["id"] as? String ?? "?") of \(rollout["target"] as? String ?? "?"): "
            + "\(rollout["state"] as? String ?? "?"), stage \(rollout["stage"] as? Int ?? 0) of stages \(stages) % "
            + "(\(rollout["share"] as? Double ?? 0) % of the fleet)"
        if let cohort = rollout["cohort"] as? Int {
            let failures = rollout["failures"] as? [[String: String]] ?? []
            line += "; cohort \(cohort), committed \(rollout["committed"] as? Int ?? 0), failed \(failures.count)"
            for failure in failures.prefix(10) {
                line += "\n  \(failure["device"] ?? "?"): \(failure["why"] ?? "?")"
            }
            if let remaining = rollout["soakRemainingSeconds"] as? Double, rollout["state"] as? String == "running" {
                line += "\n  soak: \(Int(remaining.rounded(.up))) s left in this stage"
            }
        }
        if let reason = rollout["reason"] as? String { line += "\n  \(reason)" }
        return line
    }

    /// `pause`, `resume` or `abort` the current rollout, and show it.
    static func act(_ action: String, _ connection: OperatorConnection) async throws {
        let (_, object) = try await connection.request(method: "POST", path: "/v1/rollouts/current/\(action)")
        print(describe(object))
    }

    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start rolling a published target out.")
        @OptionGroup var connection: OperatorConnection
        @Argument(help: "The target path in the published targets metadata.") var target: String
        @Option(help: "Cumulative shares of the fleet in percent, ending at 100.") var stages = "1,10,50,100"
        @Option(help: "How long each stage runs before it may advance (10m, 1h, 90s).") var soak = "10m"
        @Option(help: "A stage pauses the rollout when more than this percentage of its cohort failed.")
        var maxFailureRate = 5.0
        @Option(help: "A stage advances only once this percentage of its cohort committed or failed (default 90).")
        var minReported = 90.0

        func run() async throws {
            let parsed = stages.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard parsed.count == stages.split(separator: ",").count else {
                throw ValidationError("--stages is a list of percentages, e.g. 1,10,50,100")
            }
            guard let soakSeconds = RolloutCommand.seconds(soak) else { throw ValidationError("--soak: e.g. 10m, 90s") }
            let (_, object) = try await connection.request(
                method: "POST", path: "/v1/rollouts",
                json: [
                    "target": target, "stages": parsed, "soakSeconds": soakSeconds, "maxFailureRate": maxFailureRate,
                    "minReported": minReported,
                ])
            if let note = (object as? [String: Any])?["note"] as? String { print("note: \(note)") }
            print(RolloutCommand.describe(object))
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The current rollout: stage, cohort, failures and why. Exit 1 when it paused by itself.")
        @OptionGroup var connection: OperatorConnection
        @Flag(help: "Print the hub's JSON answer.") var json = false
        func run() async throws {
            let (_, object) = try await connection.request(method: "GET", path: "/v1/rollouts/current")
            if json { printJSON(object) } else { print(RolloutCommand.describe(object)) }
            let rollout = object as? [String: Any] ?? [:]
            if rollout["state"] as? String == "paused", (rollout["reason"] as? String)?.hasPrefix("paused by") == false
            {
                throw ExitCode(1)
            }
        }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Pause the rollout (the current cohort keeps it).")
        @OptionGroup var connection: OperatorConnection
        func run() async throws { try await RolloutCommand.act("pause", connection) }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Resume a paused rollout (its stage soaks again).")
        @OptionGroup var connection: OperatorConnection
        func run() async throws { try await RolloutCommand.act("resume", connection) }
    }

    struct Abort: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Abort: the cohort goes back to the previous target, except devices whose floor forbids it.")
        @OptionGroup var connection: OperatorConnection
        func run() async throws { try await RolloutCommand.act("abort", connection) }
    }
}
