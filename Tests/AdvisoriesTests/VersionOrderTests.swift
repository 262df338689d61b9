import Advisories
import Testing

/// Expects every version to sort strictly before every later one, both ways round, and to equal itself.
private func expectAscending(
    _ versions: [String], in ecosystem: Ecosystem, sourceLocation: SourceLocation = #_sourceLocation
) {
    for (i, low) in versions.enumerated() {
        #expect(VersionOrder.compare(low, low, in: ecosystem) == 0, "\(low) == \(low)", sourceLocation: sourceLocation)
        for high in versions[(i + 1)...] {
            #expect(
                VersionOrder.compare(low, high, in: ecosystem) == -1, "\(low) < \(high)", sourceLocation: sourceLocation
            )
            #expect(
                VersionOrder.compare(high, low, in: ecosystem) == 1, "\(high) > \(low)", sourceLocation: sourceLocation)
        }
    }
}

private func expectEqual(
    _ a: String, _ b: String, in ecosystem: Ecosystem, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(VersionOrder.compare(a, b, in: ecosystem) == 0, "\(a) == \(b)", sourceLocation: sourceLocation)
    #expect(VersionOrder.compare(b, a, in: ecosystem) == 0, "\(b) == \(a)", sourceLocation: sourceLocation)
}

private let allEcosystems: [Ecosystem] = [.semver, .pypi, .npm, .go, .cratesIO, .maven, .debian, .swiftURL]

@Suite struct EcosystemTests {
    @Test func readsOSVEcosystemNames() {
        #expect(Ecosystem(osvName: "PyPI") == .pypi)
        #expect(Ecosystem(osvName: "npm") == .npm)
        #expect(Ecosystem(osvName: "Go") == .go)
        #expect(Ecosystem(osvName: "crates.io") == .cratesIO)
        #expect(Ecosystem(osvName: "Maven") == .maven)
        #expect(Ecosystem(osvName: "Debian") == .debian)
        #expect(Ecosystem(osvName: "Debian:12") == .debian)
        #expect(Ecosystem(osvName: "SwiftURL") == .swiftURL)
    }

    @Test func refusesOtherNames() {
        for name in ["", "pypi", "NPM", "Debian:", "Ubuntu:22.04:LTS", "RubyGems", "SemVer", "Alpine:v3.18"] {
            #expect(Ecosystem(osvName: name) == nil, "\(name)")
        }
    }

    @Test func canonicalNamesRoundTrip() {
        for ecosystem in allEcosystems where ecosystem != .semver {
            #expect(Ecosystem(osvName: ecosystem.osvName) == ecosystem)
        }
        #expect(Ecosystem.semver.osvName == "SemVer")
    }

    @Test func normalizesPyPINamesPerPEP503() {
        #expect(Ecosystem.pypi.normalizedName("Friendly-Bard") == "friendly-bard")
        #expect(Ecosystem.pypi.normalizedName("FRIENDLY-BARD") == "friendly-bard")
        #expect(Ecosystem.pypi.normalizedName("friendly.bard") == "friendly-bard")
        #expect(Ecosystem.pypi.normalizedName("friendly_bard") == "friendly-bard")
        #expect(Ecosystem.pypi.normalizedName("friendly--bard") == "friendly-bard")
        #expect(Ecosystem.pypi.normalizedName("FrIeNdLy-._.-bArD") == "friendly-bard")
    }

    @Test func foldsCaseWhereTheRegistryDoesAndLeavesOtherNamesUnchanged() {
        #expect(
            Ecosystem.maven.normalizedName("org.apache.logging.log4j:log4j-core")
                == "org.apache.logging.log4j:log4j-core")
        #expect(Ecosystem.cratesIO.normalizedName("Serde_Json") == "Serde_Json")
        // The purl spec lowercases npm and Go names; OSV keeps the registry's spelling: compared case-folded.
        #expect(Ecosystem.npm.normalizedName("@Angular/Core_X") == "@angular/core_x")
        #expect(Ecosystem.go.normalizedName("github.com/Azure/azure-sdk-for-go") == "github.com/azure/azure-sdk-for-go")
        #expect(
            Ecosystem.swiftURL.normalizedName("https://github.com/Apple/swift-nio.git") == "github.com/apple/swift-nio")
    }
}

@Suite struct SemVerOrderTests {
    @Test func followsSemVerPrecedenceExample() {
        // SemVer 2.0.0 §11.4 example.
        expectAscending(
            [
                "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
                "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "1.9.0", "1.10.0", "2.0.0",
            ],
            in: .semver
        )
    }

    @Test func ignoresBuildMetadata() {
        expectEqual("1.0.0+build.1", "1.0.0+build.2", in: .semver)
        expectEqual("1.0.0-alpha+001", "1.0.0-alpha", in: .semver)
        #expect(VersionOrder.compare("1.0.0+zzz", "1.0.1", in: .semver) == -1)
    }

    @Test func numericIdentifiersSortBelowAlphanumeric() {
        expectAscending(["1.0.0-1", "1.0.0-2", "1.0.0-10", "1.0.0-1a", "1.0.0-a"], in: .semver)
        #expect(VersionOrder.compare("1.0.0-alpha.2", "1.0.0-alpha.10", in: .semver) == -1)
    }

    @Test func comparesNumbersBeyondInt64WithoutOverflow() {
        expectAscending(
            ["1.0.0", "9223372036854775807.0.0", "9223372036854775808.0.0", "100000000000000000000000.0.0"],
            in: .semver
        )
        #expect(
            VersionOrder.compare("1.0.0-99999999999999999999998", "1.0.0-99999999999999999999999", in: .semver) == -1)
    }

    @Test func acceptsLeadingZerosNumerically() {
        expectEqual("01.02.03", "1.2.3", in: .semver)
        expectEqual("1.0.0-alpha.01", "1.0.0-alpha.1", in: .semver)
    }

    @Test func padsMissingMinorAndPatch() {
        expectEqual("1", "1.0.0", in: .semver)
        expectEqual("1.2", "1.2.0", in: .semver)
    }

    @Test func refusesWhatIsNotSemVer() {
        for bad in [
            "", "1.2.x", "1.2.3.4", "1..2", "a.b.c", "1.0.0-", "1.0.0+", "1.0.0-alpha..1", "1.0.0-al_pha", "-1.0.0",
        ] {
            #expect(VersionOrder.compare(bad, "1.0.0", in: .semver) == nil, "\(bad)")
        }
    }

    @Test func zeroIsTheOSVMinimum() {
        for ecosystem: Ecosystem in [.semver, .go, .npm, .cratesIO, .swiftURL] {
            #expect(VersionOrder.compare("0", "0.0.0-alpha", in: ecosystem) == -1)
            #expect(VersionOrder.compare("0", "0.0.0", in: ecosystem) == -1)
            #expect(VersionOrder.compare("1.0.0", "0", in: ecosystem) == 1)
            #expect(VersionOrder.compare("0", "0", in: ecosystem) == 0)
            #expect(VersionOrder.compare("0", "1.2.x", in: ecosystem) == nil)
        }
    }

    @Test func toleratesLeadingV() {
        for ecosystem: Ecosystem in [.semver, .go, .npm, .cratesIO, .swiftURL] {
            expectEqual("v1.2.3", "1.2.3", in: ecosystem)
        }
    }

    @Test func npmToleratesLeadingEquals() {
        expectEqual("=1.2.3", "1.2.3", in: .npm)
        expectEqual("=v1.2.3", "v1.2.3", in: .npm)
        #expect(VersionOrder.compare("=1.2.3", "1.2.3", in: .semver) == nil)
    }

    @Test func goPseudoVersionsArePrereleases() {
        expectAscending(
            [
                "v0.0.0-20190101000000-aaaaaaaaaaaa", "v0.0.0-20210101000000-abcdef123456", "v0.0.0", "v0.1.0",
                "v1.2.3-0.20210101000000-abcdef123456", "v1.2.3", "v1.2.4-0.20220101000000-abcdef123456", "v1.2.4",
            ],
            in: .go
        )
    }

    @Test func goIncompatibleIsBuildMetadata() {
        expectEqual("v2.0.0+incompatible", "2.0.0", in: .go)
        #expect(VersionOrder.compare("v2.0.0+incompatible", "v2.0.1", in: .go) == -1)
    }

    @Test func ignoresSurroundingWhitespace() {
        expectEqual(" 1.2.3\n", "1.2.3", in: .semver)
    }
}

@Suite struct PEP440OrderTests {
    @Test func ordersDevPreReleasePostAndLocal() {
        expectAscending(
            [
                "1.0.dev0", "1.0a1.dev0", "1.0a1", "1.0b1", "1.0rc1", "1.0", "1.0+local", "1.0.post1.dev0",
                "1.0.post1",
            ],
            in: .pypi
        )
    }

    @Test func followsPackagingReferenceOrder() {
        // The ascending list used by `packaging`'s own test suite (tests/test_version.py).
        expectAscending(
            [
                "1.0.dev456", "1.0a1", "1.0a2.dev456", "1.0a12.dev456", "1.0a12", "1.0b1.dev456", "1.0b2",
                "1.0b2.post345.dev456", "1.0b2.post345", "1.0b2-346", "1.0c1.dev456", "1.0c1", "1.0rc2", "1.0c3",
                "1.0", "1.0.post456.dev34", "1.0.post456", "1.1.dev1", "1.2+123abc", "1.2+123abc456", "1.2+abc",
                "1.2+abc123", "1.2+abc123def", "1.2+1234.abc", "1.2+123456", "1.2.r32+123456", "1.2.rev33+123456",
                "1!1.0b2.post345.dev456", "1!1.0b2.post345", "1!1.0", "1!1.2.rev33+123456",
            ],
            in: .pypi
        )
    }

    @Test func padsReleaseSegmentsWithZeros() {
        expectEqual("1.0", "1.0.0", in: .pypi)
        expectEqual("1", "1.0.0.0", in: .pypi)
        #expect(VersionOrder.compare("1.0.1", "1.0", in: .pypi) == 1)
        #expect(VersionOrder.compare("1.10", "1.9", in: .pypi) == 1)
    }

    @Test func acceptsAlternativeSpellings() {
        for spelling in ["1.0a1", "1.0alpha1", "1.0.a.1", "1.0-a-1", "1.0_a_1", "1.0A1", "1.0-ALPHA.1", "v1.0a1"] {
            expectEqual(spelling, "1.0a1", in: .pypi)
        }
        for spelling in ["1.0b2", "1.0beta2", "1.0-b-2"] { expectEqual(spelling, "1.0b2", in: .pypi) }
        for spelling in ["1.0c1", "1.0pre1", "1.0preview1", "1.0RC1", "1.0-rc.1"] {
            expectEqual(spelling, "1.0rc1", in: .pypi)
        }
        for spelling in ["1.0-1", "1.0post1", "1.0.post.1", "1.0_post_1", "1.0.rev1", "1.0r1", "1.0-POST1"] {
            expectEqual(spelling, "1.0.post1", in: .pypi)
        }
        expectEqual("1.0a", "1.0a0", in: .pypi)
        expectEqual("1.0.post", "1.0.post0", in: .pypi)
        expectEqual("1.0.dev", "1.0.dev0", in: .pypi)
        expectEqual("1.0-dev-0", "1.0.dev0", in: .pypi)
    }

    @Test func epochsDominate() {
        expectAscending(["2.0", "2013.10", "1!0.1", "1!1.0", "2!0.0.1"], in: .pypi)
        expectEqual("0!1.0", "1.0", in: .pypi)
    }

    @Test func comparesLocalVersionsSegmentWise() {
        expectAscending(
            ["1.0", "1.0+abc", "1.0+abc.1", "1.0+ubuntu1", "1.0+ubuntu2", "1.0+1", "1.0+1.a", "1.0+1.0", "1.0+2"],
            in: .pypi
        )
        expectEqual("1.0+Ubuntu-1", "1.0+ubuntu.1", in: .pypi)
        expectEqual("1.0+01", "1.0+1", in: .pypi)
    }

    @Test func comparesHugeNumbers() {
        #expect(
            VersionOrder.compare("99999999999999999999999999", "100000000000000000000000000", in: .pypi) == -1
        )
        #expect(VersionOrder.compare("1.0.post99999999999999999999", "1.0.post100000000000000000000", in: .pypi) == -1)
    }

    @Test func refusesInvalidVersions() {
        for bad in ["", "1!", "!1", "1.0.x", "1.0+", "1.0+a..b", "1.0-", "1.0a-b", "1..0", "a1.0", "1.0 beta", "vv1"] {
            #expect(VersionOrder.compare(bad, "1.0", in: .pypi) == nil, "\(bad)")
        }
    }
}

@Suite struct MavenOrderTests {
    @Test func ordersQualifiers() {
        expectAscending(["1-alpha", "1-beta", "1-milestone", "1-rc", "1-snapshot", "1", "1-sp"], in: .maven)
        // Unknown qualifiers come after the known ones and compare lexically.
        expectAscending(["1-sp", "1-abc", "1-def", "1-xyz"], in: .maven)
    }

    @Test func followsComparableVersionQualifierCorpus() {
        // maven-artifact ComparableVersionTest VERSIONS_QUALIFIER.
        expectAscending(
            [
                "1-alpha2snapshot", "1-alpha2", "1-alpha-123", "1-beta-2", "1-beta123", "1-m2", "1-m11", "1-rc",
                "1-cr2", "1-rc123", "1-SNAPSHOT", "1", "1-sp", "1-sp2", "1-sp123", "1-abc", "1-def", "1-pom-1",
                "1-1-snapshot", "1-1", "1-2", "1-123",
            ],
            in: .maven
        )
    }

    @Test func followsComparableVersionNumberCorpus() {
        // maven-artifact ComparableVersionTest VERSIONS_NUMBER.
        expectAscending(
            [
                "2.0", "2-1", "2.0.a", "2.0.0.a", "2.0.2", "2.0.123", "2.1.0", "2.1-a", "2.1b", "2.1-c", "2.1-1",
                "2.1.0.1", "2.2", "2.123", "11.a2", "11.a11", "11.b2", "11.b11", "11.m2", "11.m11", "11", "11.a",
                "11b", "11c", "11m",
            ],
            in: .maven
        )
    }

    @Test func trimsTrailingNullItems() {
        expectEqual("1", "1.0", in: .maven)
        expectEqual("1", "1.0.0", in: .maven)
        expectEqual("1", "1-0", in: .maven)
        expectEqual("1.0", "1.0-0", in: .maven)
        expectEqual("1-ga", "1", in: .maven)
        expectEqual("1.GA", "1", in: .maven)
        expectEqual("1-final", "1", in: .maven)
        expectEqual("1release", "1", in: .maven)
        expectEqual("2.0.0.RELEASE", "2.0.0", in: .maven)
        expectEqual("5.3.0.Final", "5.3", in: .maven)
    }

    @Test func readsAliases() {
        expectEqual("1a1", "1-alpha-1", in: .maven)
        expectEqual("1-a1", "1alpha1", in: .maven)
        expectEqual("1b2", "1-beta-2", in: .maven)
        expectEqual("1m3", "1-milestone-3", in: .maven)
        expectEqual("1cr", "1rc", in: .maven)
        expectEqual("1-CR1", "1-rc-1", in: .maven)
        // Without a following digit, a/b/m are unknown qualifiers, after every known one.
        #expect(VersionOrder.compare("1-a", "1-sp", in: .maven) == 1)
        #expect(VersionOrder.compare("1-a", "1-alpha", in: .maven) == 1)
    }

    @Test func separatorsAndTransitionsAreEquivalent() {
        expectEqual("1a", "1-a", in: .maven)
        expectEqual("1.0a", "1-a", in: .maven)
        expectEqual("1.0.0x", "1-x", in: .maven)
        expectEqual("1X", "1x", in: .maven)
        expectEqual("1-SNAPSHOT", "1-snapshot", in: .maven)
    }

    @Test func comparesNumbers() {
        expectAscending(["1", "1-1", "1.0.1", "1.1", "1.9", "1.10", "2.0", "10"], in: .maven)
        #expect(VersionOrder.compare("2.14.1", "2.15.0", in: .maven) == -1)
        #expect(VersionOrder.compare("2.17.1", "2.17.0", in: .maven) == 1)
        #expect(VersionOrder.compare("1.99999999999999999999", "1.100000000000000000000", in: .maven) == -1)
        expectEqual("1.01", "1.1", in: .maven)
    }

    @Test func refusesEmptyAndWhitespace() {
        #expect(VersionOrder.compare("", "1", in: .maven) == nil)
        #expect(VersionOrder.compare("1 .0", "1", in: .maven) == nil)
    }
}

@Suite struct DebianOrderTests {
    @Test func tildeSortsBeforeEverything() {
        expectAscending(
            ["1.0~~", "1.0~~a", "1.0~", "1.0~beta1", "1.0~rc1", "1.0", "1.0a", "1.0+", "1.0.1"], in: .debian)
    }

    @Test func epochDominates() {
        #expect(VersionOrder.compare("1:0.9", "2.0", in: .debian) == 1)
        expectEqual("0:1.0", "1.0", in: .debian)
        expectAscending(["9.9", "1:0.1", "2:0.0.1", "10:0"], in: .debian)
    }

    @Test func comparesRevisions() {
        expectAscending(["1.0-1", "1.0-1+b1", "1.0-2", "1.0-10"], in: .debian)
        #expect(VersionOrder.compare("2.30-1+deb12u1", "2.30-1", in: .debian) == 1)
        #expect(VersionOrder.compare("3.0.11-1~deb12u2", "3.0.11-1", in: .debian) == -1)
        #expect(VersionOrder.compare("3.0.11-1~deb12u2", "3.0.11-1~deb12u1", in: .debian) == 1)
        // A missing revision compares like "0".
        expectEqual("1.0", "1.0-0", in: .debian)
        #expect(VersionOrder.compare("1.0", "1.0-1", in: .debian) == -1)
    }

    @Test func splitsRevisionAtTheLastHyphen() {
        #expect(VersionOrder.compare("1.0-beta-1", "1.0-beta-2", in: .debian) == -1)
        #expect(VersionOrder.compare("1.0-beta-1", "1.0-1", in: .debian) == 1)
    }

    @Test func lettersSortBeforeOtherCharacters() {
        expectAscending(["1.0a", "1.0z", "1.0+", "1.0."], in: .debian)
        expectAscending(["1.0A", "1.0a"], in: .debian)
    }

    @Test func comparesDigitRunsNumerically() {
        expectAscending(["1.2", "1.10", "1.100"], in: .debian)
        expectEqual("1.002", "1.2", in: .debian)
        #expect(VersionOrder.compare("1.99999999999999999999999", "1.100000000000000000000000", in: .debian) == -1)
    }

    @Test func refusesInvalidVersions() {
        for bad in ["", "1.0-", ":1.0", "a:1.0", "1:", "-1", "1.0 1", "1.0_1", "1.0-1:2", "1.0-a_b"] {
            #expect(VersionOrder.compare(bad, "1.0", in: .debian) == nil, "\(bad)")
        }
    }
}

@Suite struct VersionOrderRobustnessTests {
    @Test(arguments: allEcosystems)
    func zeroParsesAndSortsFirst(_ ecosystem: Ecosystem) {
        #expect(VersionOrder.compare("0", "0", in: ecosystem) == 0)
        #expect(VersionOrder.compare("0", "1.0", in: ecosystem) == -1)
        #expect(VersionOrder.compare("1.0", "0", in: ecosystem) == 1)
    }

    @Test(arguments: allEcosystems)
    func emptyIsUnparseable(_ ecosystem: Ecosystem) {
        #expect(VersionOrder.compare("", "1.0", in: ecosystem) == nil)
        #expect(VersionOrder.compare("1.0", "", in: ecosystem) == nil)
        #expect(VersionOrder.compare("0", "", in: ecosystem) == nil)
    }

    @Test(arguments: allEcosystems)
    func refusesOverlongVersions(_ ecosystem: Ecosystem) {
        let long = "1." + String(repeating: "0", count: 254)
        #expect(VersionOrder.compare(long, "1", in: ecosystem) != nil)
        #expect(VersionOrder.compare(long + "0", "1", in: ecosystem) == nil)
        #expect(VersionOrder.compare("0", String(repeating: "1a", count: 100_000), in: ecosystem) == nil)
    }

    @Test(arguments: allEcosystems)
    func neverCrashesOnOddInput(_ ecosystem: Ecosystem) {
        let odd = [
            "", " ", "v", "=", "..", "1..2", "~~", "~", "1!", "!", "+", "-", "--", "::", "1:", "0:", "%", "\u{0}",
            "🚀", "1.0🚀", "١٢٣", "1.0-🚀", "9999999999999999999999999999999999999999.0", ".1", "1.", "-1", "1-", "a",
            "1.0.0-+", "1.0+-", "1.0a-", "1.0.post-", "v0", "00", "0.0", "1-1-1-1-1", "1.a.1.a.1.a",
            String(repeating: "1a", count: 128), String(repeating: "-", count: 256),
            String(repeating: "1.", count: 500), String(repeating: "a-", count: 500),
            String(repeating: "~", count: 500),
        ]
        for a in odd {
            for b in odd + ["1.0", "0"] {
                let forward = VersionOrder.compare(a, b, in: ecosystem)
                let backward = VersionOrder.compare(b, a, in: ecosystem)
                #expect(forward.map { -$0 } == backward, "\(a) vs \(b)")
            }
        }
    }
}
