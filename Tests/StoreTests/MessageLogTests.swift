import Core
import Foundation
import Store
import Testing

/// A single node's MQTT message log on SQLite (`HubStore.keepsMessageLog`): a message that carries a delivery is
/// logged under its own id in its batch's transaction, and only a stored one; the log is read in id order and pruned
/// up to an id and to a count.
@Suite struct MessageLogTests {
    @Test func storedMessagesAreLoggedUnderTheirIdsAndPruned() async throws {
        let (store, _) = try await HubStoreTests.open(.sqlite)
        #expect(store.keepsMessageLog)
        let (a, b) = (try DeviceID("log-a"), try DeviceID("log-b"))
        for device in [a, b] {
            try await store.enroll(
                device: device, certificate: HubStoreTests.certificate(device.rawValue, device: device), at: Date())
        }
        #expect(try await store.messageLogHead() == 0)
        let sent = Date(timeIntervalSince1970: 1_800_000_000)
        func message(_ n: UInt8, _ device: DeviceID, counter: UInt64, logged: Bool) -> NewTelemetry {
            var message = NewTelemetry(deviceID: device, receivedAt: sent, correlationID: "c\(n)", body: [n])
            message.counter = counter
            if logged { message.relay = RelayedMessage(origin: "", publisher: n % 2 == 0 ? nil : "p", packet: [n]) }
            return message
        }
        // Queued together: one batch, device by device. 3 reuses a counter (refused, so not logged); 4 carries no
        // delivery.
        let writes = [
            message(1, a, counter: 1, logged: true), message(2, b, counter: 1, logged: true),
            message(3, a, counter: 1, logged: true), message(4, a, counter: 2, logged: false),
            message(5, b, counter: 2, logged: true),
        ].map { store.queueTelemetry($0) }
        var ids: [Int64?] = []
        for write in writes { ids.append(try? await write.value()) }
        #expect(ids[2] == nil && ids.compactMap { $0 }.count == 4, "\(ids)")
        let logged = try await store.loggedMessages(after: 0, limit: 10)
        #expect(logged.map(\.id) == [ids[0], ids[1], ids[4]].compactMap { $0 }.sorted(), "under the messages' ids")
        #expect(logged.map { $0.message.packet } == logged.map { [UInt8(ids.firstIndex(of: $0.id)! + 1)] })
        #expect(logged.first { $0.message.packet == [2] }?.message.publisher == nil)
        #expect(logged.first { $0.message.packet == [5] }?.message.publisher == "p")
        #expect(logged.allSatisfy { $0.message.at == sent }, "expiry counts from when the message came")
        #expect(try await store.messageLogHead() == ids.compactMap { $0 }.max())
        #expect(try await store.loggedMessages(after: logged[0].id, limit: 1).map(\.id) == [logged[1].id])

        // Pruned up to an id, then to the newest one.
        try await store.pruneMessageLog(through: logged[0].id, keeping: 10)
        #expect(try await store.loggedMessages(after: 0, limit: 10).map(\.id) == logged.dropFirst().map(\.id))
        try await store.pruneMessageLog(through: 0, keeping: 1)
        #expect(try await store.loggedMessages(after: 0, limit: 10).map(\.id) == [logged[2].id])
        try await store.close()
    }
}
