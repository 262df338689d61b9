import Advisories
import Testing

@Suite struct PackageURLTests {
    @Test func parsesPyPIPurlFromCycloneDXPy() throws {
        let purl = try PackageURL(parsing: "pkg:pypi/requests@2.31.0")
        #expect(purl.type == "pypi")
        #expect(purl.namespace == nil)
        #expect(purl.name == "requests")
        #expect(purl.version == "2.31.0")
        #expect(purl.qualifiers.isEmpty)
        #expect(purl.subpath == nil)
        #expect(purl.description == "pkg:pypi/requests@2.31.0")
        #expect(purl.osvPackage?.ecosystem == .pypi)
        #expect(purl.osvPackage?.name == "requests")
    }

    @Test func normalizesPyPINames() throws {
        let purl = try PackageURL(parsing: "pkg:pypi/Django_Rest.Framework@3.14.0")
        #expect(purl.name == "django-rest.framework")
        #expect(purl.description == "pkg:pypi/django-rest.framework@3.14.0")
        // OSV compares PyPI names after PEP 503 normalisation, which also folds ".".
        #expect(purl.osvPackage?.name == "django-rest-framework")
    }

    @Test func parsesScopedNpmPackage() throws {
        let purl = try PackageURL(parsing: "pkg:npm/%40angular/core@16.0.0")
        #expect(purl.namespace == "@angular")
        #expect(purl.name == "core")
        #expect(purl.version == "16.0.0")
        #expect(purl.description == "pkg:npm/%40angular/core@16.0.0")
        #expect(purl.osvPackage?.ecosystem == .npm)
        #expect(purl.osvPackage?.name == "@angular/core")
    }

    @Test func acceptsUnencodedNpmScope() throws {
        let purl = try PackageURL(parsing: "pkg:npm/@angular/core@16.0.0")
        #expect(purl == (try PackageURL(parsing: "pkg:npm/%40angular/core@16.0.0")))
        let unversioned = try PackageURL(parsing: "pkg:npm/@angular/core")
        #expect(unversioned.namespace == "@angular")
        #expect(unversioned.name == "core")
        #expect(unversioned.version == nil)
    }

    @Test func lowercasesNpmNames() throws {
        let purl = try PackageURL(parsing: "pkg:npm/Lodash@4.17.21")
        #expect(purl.name == "lodash")
        #expect(purl.osvPackage?.name == "lodash")
    }

    @Test func parsesGoModule() throws {
        let purl = try PackageURL(parsing: "pkg:golang/github.com/gin-gonic/gin@v1.9.0")
        #expect(purl.namespace == "github.com/gin-gonic")
        #expect(purl.name == "gin")
        #expect(purl.version == "v1.9.0")
        #expect(purl.osvPackage?.ecosystem == .go)
        #expect(purl.osvPackage?.name == "github.com/gin-gonic/gin")
        // Go module paths keep their case in the purl, and compare case-insensitively with OSV's spelling.
        let azure = try PackageURL(parsing: "pkg:golang/github.com/Azure/azure-sdk-for-go@v68.0.0%2Bincompatible")
        #expect(azure.namespace == "github.com/Azure")
        #expect(azure.osvPackage?.name == "github.com/azure/azure-sdk-for-go")
        #expect(Ecosystem.go.normalizedName("github.com/BurntSushi/toml") == "github.com/burntsushi/toml")
        #expect(azure.version == "v68.0.0+incompatible")
        #expect(azure.description == "pkg:golang/github.com/Azure/azure-sdk-for-go@v68.0.0%2Bincompatible")
    }

    @Test func parsesMavenCoordinates() throws {
        let purl = try PackageURL(parsing: "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1")
        #expect(purl.namespace == "org.apache.logging.log4j")
        #expect(purl.name == "log4j-core")
        #expect(purl.osvPackage?.ecosystem == .maven)
        #expect(purl.osvPackage?.name == "org.apache.logging.log4j:log4j-core")
        #expect((try PackageURL(parsing: "pkg:maven/log4j-core@2.14.1")).osvPackage == nil)
    }

    @Test func parsesDebianPackageWithQualifiers() throws {
        let purl = try PackageURL(parsing: "pkg:deb/debian/openssl@3.0.11-1~deb12u2?arch=amd64&distro=debian-12")
        #expect(purl.namespace == "debian")
        #expect(purl.name == "openssl")
        #expect(purl.version == "3.0.11-1~deb12u2")
        #expect(purl.qualifiers == ["arch": "amd64", "distro": "debian-12"])
        #expect(purl.description == "pkg:deb/debian/openssl@3.0.11-1~deb12u2?arch=amd64&distro=debian-12")
        #expect(purl.osvPackage?.ecosystem == .debian)
        #expect(purl.osvPackage?.name == "openssl")
        #expect(purl.debianRelease == "12")
        // Ubuntu has advisories of its own: not matched against Debian's.
        #expect((try PackageURL(parsing: "pkg:deb/ubuntu/openssl@3.0.2-0ubuntu1")).osvPackage == nil)
        // OSV's Debian records name source packages: a binary package is matched by its upstream (source).
        let binary = try PackageURL(parsing: "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?upstream=openssl&distro=bookworm")
        #expect(binary.osvPackage?.name == "openssl")
        #expect(binary.debianRelease == "12")
        let sourceVersion = try PackageURL(parsing: "pkg:deb/debian/libc6@2.36-9?upstream=glibc%402.36-9")
        #expect(sourceVersion.osvPackage?.name == "glibc")
    }

    @Test func parsesCargoCrate() throws {
        let purl = try PackageURL(parsing: "pkg:cargo/serde@1.0.0")
        #expect(purl.osvPackage?.ecosystem == .cratesIO)
        #expect(purl.osvPackage?.name == "serde")
    }

    @Test func parsesSwiftPackage() throws {
        let purl = try PackageURL(parsing: "pkg:swift/github.com/apple/swift-nio@2.62.0")
        #expect(purl.namespace == "github.com/apple")
        #expect(purl.name == "swift-nio")
        #expect(purl.osvPackage?.ecosystem == .swiftURL)
        #expect(purl.osvPackage?.name == "github.com/apple/swift-nio")
        #expect((try PackageURL(parsing: "pkg:swift/swift-nio@2.62.0")).osvPackage == nil)
    }

    @Test func unknownTypesHaveNoOSVPackage() throws {
        #expect((try PackageURL(parsing: "pkg:generic/openssl@1.1.10g")).osvPackage == nil)
        #expect((try PackageURL(parsing: "pkg:nuget/EnterpriseLibrary.Common@6.0.1304")).osvPackage == nil)
    }

    @Test func lowercasesTypeAndQualifierKeysAndSortsQualifiers() throws {
        let purl = try PackageURL(parsing: "PKG:Gem/jruby-launcher@1.1.2?Platform=java&Arch=x86")
        #expect(purl.type == "gem")
        #expect(purl.qualifiers == ["platform": "java", "arch": "x86"])
        #expect(purl.description == "pkg:gem/jruby-launcher@1.1.2?arch=x86&platform=java")
    }

    @Test func lowercasesGitHubNamespaceAndName() throws {
        let purl = try PackageURL(parsing: "pkg:GitHub/Package-URL/purl-spec@244fd47e07d1004f0aed9c")
        #expect(purl.description == "pkg:github/package-url/purl-spec@244fd47e07d1004f0aed9c")
    }

    @Test func stripsSlashesAfterScheme() throws {
        let purl = try PackageURL(parsing: "pkg://npm/left-pad@1.3.0")
        #expect(purl.type == "npm")
        #expect(purl.name == "left-pad")
        #expect(purl.description == "pkg:npm/left-pad@1.3.0")
    }

    @Test func decodesAndReencodesQualifierValues() throws {
        let purl = try PackageURL(
            parsing: "pkg:generic/bitwarderl?vcs_url=git%2Bhttps://git.fsfe.org/dxtr/bitwarderl%40cc55108da32"
        )
        #expect(purl.qualifiers["vcs_url"] == "git+https://git.fsfe.org/dxtr/bitwarderl@cc55108da32")
        #expect(
            purl.description
                == "pkg:generic/bitwarderl?vcs_url=git%2Bhttps://git.fsfe.org/dxtr/bitwarderl%40cc55108da32"
        )
    }

    @Test func dropsEmptyQualifierValues() throws {
        let purl = try PackageURL(parsing: "pkg:deb/debian/curl@7.88.1?arch=&distro=debian-12&&flag")
        #expect(purl.qualifiers == ["distro": "debian-12"])
    }

    @Test func parsesSubpath() throws {
        let purl = try PackageURL(parsing: "pkg:golang/google.golang.org/genproto#/googleapis/./api/../annotations/")
        #expect(purl.name == "genproto")
        #expect(purl.version == nil)
        #expect(purl.subpath == "googleapis/api/annotations")
        #expect(purl.description == "pkg:golang/google.golang.org/genproto#googleapis/api/annotations")
    }

    @Test func keepsColonsUnencoded() throws {
        let purl = try PackageURL(
            parsing: "pkg:docker/customer/dockerimage@sha256%3A244fd47e07d10?repository_url=gcr.io")
        #expect(purl.version == "sha256:244fd47e07d10")
        #expect(purl.description == "pkg:docker/customer/dockerimage@sha256:244fd47e07d10?repository_url=gcr.io")
    }

    @Test func encodesNonASCII() throws {
        let purl = try PackageURL(parsing: "pkg:generic/caf%C3%A9@1.0%20beta")
        #expect(purl.name == "café")
        #expect(purl.version == "1.0 beta")
        #expect(purl.description == "pkg:generic/caf%C3%A9@1.0%20beta")
    }

    @Test func canonicalFormRoundTrips() throws {
        for text in [
            "pkg:pypi/requests@2.31.0", "pkg:npm/%40angular/core@16.0.0", "pkg:golang/github.com/gin-gonic/gin@v1.9.0",
            "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1?type=jar",
            "pkg:deb/debian/openssl@3.0.11-1~deb12u2?arch=amd64&distro=debian-12", "pkg:cargo/serde@1.0.0",
            "pkg:swift/github.com/apple/swift-nio@2.62.0", "pkg:generic/a%2Fb@1%402#x/y",
        ] {
            let purl = try PackageURL(parsing: text)
            #expect(purl.description == text)
            #expect(try PackageURL(parsing: purl.description) == purl)
        }
    }

    @Test(arguments: [
        ("", "empty"),
        ("npm/left-pad@1.3.0", "pkg:"),
        ("http://npm/left-pad", "pkg:"),
        ("pkg:", "type"),
        ("pkg://", "type"),
        ("pkg:npm", "name"),
        ("pkg:npm/", "name"),
        ("pkg:npm/@1.0", "name"),
        ("pkg:maven/org.apache/@1.0", "name"),
        ("pkg:npm/left%2pad", "percent"),
        ("pkg:npm/left-pad%", "percent"),
        ("pkg:npm/left-pad@1.0%zz", "percent"),
        ("pkg:npm/left-pad?a=%G1", "percent"),
        ("pkg:npm/left%FFpad", "UTF-8"),
        ("pkg:1npm/left-pad", "type"),
        ("pkg:n%70m/left-pad", "type"),
        ("pkg:npm/left-pad?1a=b", "qualifier"),
        ("pkg:npm/left-pad?a=b&A=c", "duplicate"),
        ("pkg:npm/a%2Fb/left-pad", "namespace"),
    ])
    func refusesInvalidPurls(_ text: String, _ reason: String) {
        let error = #expect(throws: PackageURLError.self) { try PackageURL(parsing: text) }
        #expect(error?.description.contains(reason) == true, "\(text): \(error?.description ?? "no error")")
    }
}
