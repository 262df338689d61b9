import Configuration
import Core
import Foundation
import JSON
import MQTT

/// The configuration file as swift-configuration reads it, without `mqtt.payloads`: that setting is an array of
/// objects, which swift-configuration's JSON snapshot refuses (it flattens objects and takes arrays of strings or
/// numbers only), so the key is taken out here and `PayloadRulesConfiguration` reads it from the same file. A file
/// without it is handed over byte for byte.
struct HubFileSnapshot: FileConfigSnapshot {
    typealias ParsingOptions = JSONSnapshot.ParsingOptions

    let inner: JSONSnapshot

    init(data: RawSpan, providerName: String, parsingOptions: ParsingOptions) throws {
        let bytes = data.withUnsafeBytes { Data($0) }
        if var object = try? JSONSerialization.jsonObject(with: bytes) as? [String: Any],
            PayloadRulesConfiguration.take(from: &object) != nil
        {
            let rest = [UInt8](try JSONSerialization.data(withJSONObject: object))
            inner = try JSONSnapshot(data: rest.span.bytes, providerName: providerName, parsingOptions: parsingOptions)
        } else {
            inner = try JSONSnapshot(data: data, providerName: providerName, parsingOptions: parsingOptions)
        }
    }

    var providerName: String { inner.providerName }

    func value(forKey key: AbsoluteConfigKey, type: ConfigType) throws -> LookupResult {
        try inner.value(forKey: key, type: type)
    }

    var description: String { inner.description }
    var debugDescription: String { inner.debugDescription }
}

/// `mqtt.payloads`: from the configuration file (`{"mqtt": {"payloads": [...]}}` or the dotted key), or from
/// `BULWARK_MQTT_PAYLOADS` holding the same array as JSON text (which wins, like every environment variable).
///
/// Each rule is `{"topics": FILTER, "identities": [KIND…], "format": "json"|"utf8"|"binary", "maxBytes": N,
/// "contentTypes": [MEDIA-TYPE…]}`; only `topics` and `format` are required (`identities` defaults to all three).
/// An unknown member is an error, so a misspelt limit is never silently ignored.
enum PayloadRulesConfiguration {
    /// Removes and returns the `mqtt.payloads` value of a parsed configuration file.
    static func take(from object: inout [String: Any]) -> Any? {
        if let value = object.removeValue(forKey: "mqtt.payloads") { return value }
        guard var mqtt = object["mqtt"] as? [String: Any], let value = mqtt.removeValue(forKey: "payloads") else {
            return nil
        }
        object["mqtt"] = mqtt
        return value
    }

    /// The rules from the file (nil: none there) and the environment's text (nil: not set).
    static func load(file: String?, environment: String?) throws -> PayloadRules? {
        if let environment {
            return try parse(Array(environment.utf8), origin: "BULWARK_MQTT_PAYLOADS")
        }
        guard let file, let data = FileManager.default.contents(atPath: file),
            var object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let value = take(from: &object)
        else { return nil }
        guard JSONSerialization.isValidJSONObject([value]),
            let bytes = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed])
        else { throw HubStartupError("mqtt.payloads must be an array of rules") }
        return try parse([UInt8](bytes), origin: "mqtt.payloads")
    }

    static let members: Set<String> = ["topics", "identities", "format", "maxBytes", "contentTypes"]

    /// Parses the rules, each checked as it will be used; errors name the rule and the member.
    static func parse(_ bytes: [UInt8], origin: String) throws -> PayloadRules {
        let value: JSONValue
        do { value = try StrictJSON(maxDepth: 4, maxMembers: 1000).value(bytes) } catch {
            throw HubStartupError("\(origin) is not valid JSON: \(error)")
        }
        guard let array = value.arrayValue else { throw HubStartupError("\(origin) must be an array of rules") }
        var rules: [PayloadRule] = []
        for (index, element) in array.enumerated() {
            let name = "mqtt.payloads[\(index)]"
            guard let object = element.objectValue else { throw HubStartupError("\(name) must be an object") }
            if let unknown = object.keys.first(where: { !members.contains($0) }) {
                throw HubStartupError(
                    "\(name): unknown member \(unknown) (topics, identities, format, maxBytes, contentTypes)")
            }
            guard let topics = object["topics"]?.stringValue else {
                throw HubStartupError("\(name).topics must be a topic filter")
            }
            guard let formatName = object["format"]?.stringValue, let format = PayloadFormat(rawValue: formatName)
            else {
                throw HubStartupError("\(name).format must be json, utf8 or binary")
            }
            var identities = Set(IdentityKind.allCases)
            if let list = object["identities"] {
                guard let names = list.arrayValue?.compactMap(\.stringValue), names.count == list.arrayValue?.count,
                    !names.isEmpty
                else { throw HubStartupError("\(name).identities must be a non-empty array of names") }
                identities = []
                for kind in names {
                    guard let parsed = IdentityKind(rawValue: kind) else {
                        throw HubStartupError("\(name).identities: \(kind) is not device, operator or application")
                    }
                    identities.insert(parsed)
                }
            }
            var maxBytes: Int?
            if let limit = object["maxBytes"] {
                guard let number = limit.integerValue, (1...(16 << 20)).contains(number) else {
                    throw HubStartupError("\(name).maxBytes must be an integer 1-16777216")
                }
                maxBytes = Int(number)
            }
            var contentTypes: [String]?
            if let list = object["contentTypes"] {
                guard let types = list.arrayValue?.compactMap(\.stringValue), types.count == list.arrayValue?.count,
                    !types.isEmpty, types.allSatisfy(isMediaType)
                else {
                    throw HubStartupError(
                        "\(name).contentTypes must be a non-empty array of media types (type/subtype)")
                }
                contentTypes = types
            }
            let rule = PayloadRule(
                topics: topics, identities: identities,
                check: PayloadCheck(format: format, maxBytes: maxBytes, contentTypes: contentTypes))
            do { try rule.validate() } catch { throw HubStartupError("\(name).topics: \(error.detail)") }
            rules.append(rule)
        }
        return PayloadRules(rules)
    }

    /// `type/subtype` of RFC 9110 §8.3.1 token characters, without parameters (they are ignored when comparing).
    static func isMediaType(_ text: String) -> Bool {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        let token = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        return parts.count == 2 && parts.allSatisfy { !$0.isEmpty && $0.count <= 127 && $0.allSatisfy(token.contains) }
    }
}
