import JSON
import TUF
import Testing

@Suite struct DelegationTests {
    func targets(_ delegations: JSONValue) throws -> Targets {
        let signed = obj([
            "_type": .string("targets"), "spec_version": .string("1.0.31"), "version": .integer(1),
            "expires": .string("2099-01-01T00:00:00Z"), "targets": obj([:]), "delegations": delegations,
        ])
        return try Targets(json: try need(signed.objectValue))
    }

    func succinct(bits: Int64) throws -> Delegations {
        let d = obj([
            "keys": obj([:]),
            "succinct_roles": obj([
                "keyids": .array([.string("k1")]), "threshold": .integer(1), "bit_length": .integer(bits),
                "name_prefix": .string("bin"),
            ]),
        ])
        return try need(try targets(d).delegations)
    }

    /// Known answers computed with python-tuf's `SuccinctRoles.get_role_for_target`.
    @Test(arguments: [
        (1, ["bin-1", "bin-1", "bin-1", "bin-0"]),
        (4, ["bin-f", "bin-c", "bin-e", "bin-2"]),
        (8, ["bin-ff", "bin-ca", "bin-e3", "bin-24"]),
        (13, ["bin-1fe8", "bin-1952", "bin-1c76", "bin-0480"]),
        (32, ["bin-ff4111e8", "bin-ca978112", "bin-e3b0c442", "bin-24068fa9"]),
    ])
    func succinctRoleNamesMatchPythonTUF(_ bits: Int, _ expected: [String]) throws {
        let d = try succinct(bits: Int64(bits))
        let paths = ["foo/bar.txt", "a", "", "é/日本"]
        for (path, name) in zip(paths, expected) {
            let roles = d.rolesFor(targetPath: path)
            #expect(roles.count == 1)
            #expect(roles.first?.name == name)
            #expect(roles.first?.terminating == true)
            #expect(d.roleKeys(for: name)?.keyids == ["k1"])
        }
    }

    @Test func succinctRoleMembership() throws {
        let d = try succinct(bits: 4)
        #expect(d.roleKeys(for: "bin-a") != nil)
        #expect(d.roleKeys(for: "bin-10") == nil)  // wrong width
        #expect(d.roleKeys(for: "bin-A") == nil)  // uppercase is not how names are formed
        #expect(d.roleKeys(for: "other-a") == nil)
        #expect(throws: TUFError.self) { try self.succinct(bits: 0) }
        #expect(throws: TUFError.self) { try self.succinct(bits: 33) }
    }

    @Test func rolesAndSuccinctRolesAreExclusive() {
        let both = obj([
            "keys": obj([:]), "roles": .array([]),
            "succinct_roles": obj([
                "keyids": .array([]), "threshold": .integer(1), "bit_length": .integer(2), "name_prefix": .string("b"),
            ]),
        ])
        #expect(throws: TUFError.self) { try self.targets(both) }
        #expect(throws: TUFError.self) { try self.targets(obj(["keys": obj([:])])) }
    }

    /// Known answers computed with python-tuf's `DelegatedRole.is_delegated_path`.
    @Test(arguments: [
        ("*", "a", true), ("*", "a/b", false), ("a/*", "a/b", true), ("a/*.txt", "a/b.txt", true),
        ("a/*.txt", "a/b.bin", false), ("?.txt", "a.txt", true), ("?.txt", "ab.txt", false), ("[ab]*", "b1", true),
        ("[!ab]*", "b1", false), ("[!ab]*", "c1", true), ("a/[a-c]", "a/b", true), ("*/*", "a/b", true),
        ("*", "", true), ("[", "[", true), ("a[", "a[", true), ("**", "x/y", false),
        ("targets/*/file", "targets/x/file", true),
    ])
    func pathPatternsMatchPythonTUF(_ pattern: String, _ path: String, _ expected: Bool) {
        #expect(PathPattern.matches(pattern: pattern, path: path) == expected)
    }

    @Test func pathHashPrefixes() throws {
        // sha256("foo/bar.txt") starts with ff41...
        let d = obj([
            "keys": obj([:]),
            "roles": .array([
                obj([
                    "name": .string("r"), "keyids": .array([]), "threshold": .integer(1), "terminating": .bool(false),
                    "path_hash_prefixes": .array([.string("ff4"), .string("00")]),
                ])
            ]),
        ])
        let delegations = try need(try targets(d).delegations)
        #expect(delegations.rolesFor(targetPath: "foo/bar.txt").map(\.name) == ["r"])
        #expect(delegations.rolesFor(targetPath: "a").isEmpty)
    }
}
