import Core
import Foundation
import Store
import Testing

/// What the hub's CRL is built from, against every backend.
@Suite struct RevokedCertificatesTests {
    typealias Backend = HubStoreTests.Backend

    @Test(arguments: Backend.allCases)
    func listsEachRevokedCertificateWithItsFirstRevocationDate(_ backend: Backend) async throws {
        let (store, _) = try await HubStoreTests.open(backend)
        let a = try DeviceID("a")
        let b = try DeviceID("b")
        let paired = try DeviceID("p")
        let t0 = Date(timeIntervalSince1970: 1_700_000_000.125)
        let t1 = t0 + 60
        try await store.enroll(device: a, certificate: HubStoreTests.certificate("0a", device: a), at: t0)
        try await store.enroll(device: b, certificate: HubStoreTests.certificate("0b", device: b), at: t0)
        try await store.addCertificate(HubStoreTests.certificate("0c", device: nil))
        // Issued by pairing: recorded revoked, with no device, until the device confirms.
        var pending = HubStoreTests.certificate("0d", device: nil)
        pending.subject = Identity.device(paired).uri
        pending.revokedAt = t0
        try await store.addCertificate(pending)
        #expect(
            try await store.revokedCertificates() == [
                RevokedCertificate(
                    serialHex: "0d", revokedAt: t0, notAfter: Date(timeIntervalSince1970: 2000), deviceID: nil)
            ])

        _ = try await store.revoke(device: a, at: t1)
        _ = try await store.revoke(device: a, at: t1 + 60)
        let listed = try await store.revokedCertificates()
        #expect(listed.map(\.serialHex) == ["0a", "0d"])
        #expect(listed.first?.revokedAt == t1, "revoking again does not move the date")
        #expect(listed.first?.deviceID == a)
        #expect(listed.first?.notAfter == Date(timeIntervalSince1970: 2000))
        #expect(Set(listed.map(\.serialHex)) == (try await store.revokedSerials()))

        try await store.activatePendingCertificate("0d", device: paired, irk: [1], at: t1)
        #expect(try await store.revokedCertificates().map(\.serialHex) == ["0a"])
        try await store.close()
    }
}
