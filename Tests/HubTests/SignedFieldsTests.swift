import HTTPTypes
import Testing

@testable import Hub

/// The device routes read the five fields the signature profile covers in one pass over the request's fields. Each
/// must be exactly what HTTPFields' own combining subscript gives (every line, `, ` between them; names matched
/// without regard to case): the signature and the gateway's stages must see the same values.
struct SignedFieldsTests {
    static let names: [HTTPField.Name] = [
        .contentType, DeviceRoutes.messageTypeField, DeviceRoutes.signatureInputField, DeviceRoutes.signatureField,
        DeviceRoutes.contentDigestField,
    ]

    static func check(_ fields: HTTPFields) {
        let read = DeviceRoutes.signedFields(fields)
        #expect(read.contentType == fields[.contentType])
        #expect(read.messageType == fields[DeviceRoutes.messageTypeField])
        #expect(read.signatureInput == fields[DeviceRoutes.signatureInputField])
        #expect(read.signature == fields[DeviceRoutes.signatureField])
        #expect(read.contentDigest == fields[DeviceRoutes.contentDigestField])
    }

    @Test func everyLineOfEachFieldIsCombinedAsHTTPFieldsDoes() throws {
        var fields = HTTPFields()
        fields.append(HTTPField(name: .contentType, value: "application/json"))
        fields.append(HTTPField(name: try #require(HTTPField.Name("signature-input")), value: #"b=("@method")"#))
        fields.append(HTTPField(name: .accept, value: "*/*"))
        fields.append(HTTPField(name: try #require(HTTPField.Name("CONTENT-TYPE")), value: "charset=utf-8"))
        fields.append(HTTPField(name: try #require(HTTPField.Name("Signature")), value: "b=:AAAA:"))
        fields.append(HTTPField(name: try #require(HTTPField.Name("Signature-Input")), value: #"c=("@path")"#))
        let read = DeviceRoutes.signedFields(fields)
        #expect(read.contentType == "application/json, charset=utf-8")
        #expect(read.signatureInput == #"b=("@method"), c=("@path")"#)
        #expect(read.messageType == nil && read.contentDigest == nil)
        Self.check(fields)
    }

    @Test func randomFieldListsAgreeWithTheSubscript() throws {
        var generator = SystemRandomNumberGenerator()
        let others: [HTTPField.Name] = [.accept, .cacheControl, .userAgent, .contentLength]
        for _ in 0..<500 {
            var fields = HTTPFields()
            for index in 0..<Int.random(in: 0...12, using: &generator) {
                let name =
                    Bool.random(using: &generator)
                    ? Self.names.randomElement(using: &generator) ?? .contentType
                    : others.randomElement(using: &generator) ?? .accept
                let spelt =
                    Bool.random(using: &generator) ? name : try #require(HTTPField.Name(name.rawName.uppercased()))
                fields.append(HTTPField(name: spelt, value: "v\(index)"))
            }
            Self.check(fields)
        }
    }
}
