import Foundation
import JSON
import Testing

/// nst/JSONTestSuite's parsing cases, when a checkout is given (`JSON_TEST_SUITE_DIR`; never committed): every
/// `n_` case is refused by both profiles; every `y_` case is accepted, except the ones a profile refuses on purpose,
/// listed here with the rule; `i_` cases (implementation-defined) must only not crash, and what we do is printed.
@Suite(.enabled(if: ProcessInfo.processInfo.environment["JSON_TEST_SUITE_DIR"] != nil))
struct JSONTestSuiteTests {
    static var directory: String {
        (ProcessInfo.processInfo.environment["JSON_TEST_SUITE_DIR"] ?? "") + "/test_parsing"
    }

    /// `y_` cases I-JSON refuses (RFC 7493): duplicate names (§2.3), integers beyond ±(2^53 − 1) (§2.2),
    /// noncharacters (§2.1); and the device limit on a number's length (40 characters; the case has 80).
    static let iJSONRefusals: Set<String> = [
        "y_number_double_close_to_zero.json", "y_string_escaped_noncharacter.json",
        "y_object_duplicated_key.json", "y_object_duplicated_key_and_value.json",
        "y_number_very_big_negative_int.json", "y_string_last_surrogates_1_and_2.json",
        "y_string_nonCharacterInUTF-8_U+FFFF.json", "y_string_nonCharacterInUTF-8_U+10FFFF.json",
        "y_string_unicode_U+FDD0_nonchar.json", "y_string_unicode_U+FFFE_nonchar.json",
        "y_string_unicode_U+10FFFE_nonchar.json", "y_string_unicode_U+1FFFE_nonchar.json",
    ]

    /// `y_` cases the TUF profile refuses: duplicate keys (two parsers must not disagree on signed content) and
    /// integers beyond `Int64` (canonical JSON's integers).
    static let tufRefusals: Set<String> = [
        "y_object_duplicated_key.json", "y_object_duplicated_key_and_value.json",
        "y_number_very_big_negative_int.json",
    ]

    static func cases(_ prefix: String) throws -> [(String, [UInt8])] {
        try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasPrefix(prefix) }.sorted().map {
            ($0, Array(try Data(contentsOf: URL(fileURLWithPath: directory + "/" + $0))))
        }
    }

    @Test(arguments: ["ijson", "tuf"])
    func yesCasesAreAcceptedSaveTheProfilesRules(_ profile: String) throws {
        let parser = profile == "ijson" ? StrictJSON() : StrictJSON.tuf
        let refusals = profile == "ijson" ? Self.iJSONRefusals : Self.tufRefusals
        let cases = try Self.cases("y_")
        #expect(cases.count >= 90, "a JSONTestSuite checkout")
        for (name, bytes) in cases {
            let accepted = (try? parser.parse(bytes)) != nil
            #expect(accepted != refusals.contains(name), "\(profile) \(name)")
        }
    }

    @Test(arguments: ["ijson", "tuf"])
    func noCasesAreRefused(_ profile: String) throws {
        let parser = profile == "ijson" ? StrictJSON() : StrictJSON.tuf
        let cases = try Self.cases("n_")
        #expect(cases.count >= 180)
        for (name, bytes) in cases { #expect((try? parser.parse(bytes)) == nil, "\(profile) accepts \(name)") }
    }

    @Test func implementationDefinedCasesDoNotCrash() throws {
        for (name, bytes) in try Self.cases("i_") {
            let device = (try? StrictJSON().parse(bytes)) != nil ? "accepted" : "refused"
            let tuf = (try? StrictJSON.tuf.parse(bytes)) != nil ? "accepted" : "refused"
            print("JSONTestSuite \(name): I-JSON \(device), TUF \(tuf)")
        }
    }
}
