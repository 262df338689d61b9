/// The framing of one HTTP/1.1 response to a GET, as a pure state machine: bytes in, a decision out, no I/O
/// (`SocketFetcher` reads the socket and applies it).
///
/// - RFC 9112 §4: the status line `HTTP/1.x SSS reason`; interim 1xx responses are skipped (§4, RFC 9110 §15.2), at
///   most 16 of them.
/// - RFC 9112 §5: field lines `name: value`, no whitespace before the colon (§5.1: a server MUST reject it, and a
///   client that accepted it would read a different message than a proxy), no obsolete line folding (§5.2).
/// - RFC 9112 §6.3: the body length: Transfer-Encoding `chunked` (which overrides Content-Length), else
///   Content-Length (several values must agree), else until the server closes. 204 and 304 have no body.
/// - RFC 9112 §7.1: chunked coding: hex chunk sizes, chunk extensions ignored, trailer fields read and dropped.
/// - RFC 9112 §9.3: persistence. After a response `reusable` says whether the connection may carry the next request:
///   HTTP/1.1 without `Connection: close` (§9.6), a body framed by its length or chunks (not by the close, and not by
///   both a length and chunks, which §6.3 says ought to be handled as an error), read to its end, and nothing
///   received beyond it. An error answer is reported as soon as its head is read; its body is dropped when it is of
///   declared length and already received in full (the connection stays usable), else the connection is not reused.
///   A 204 or 304 has no body to read.
///
/// Limits: at most `maxBytes` of body (TUF's "download up to N bytes", refused as soon as a declared length or the
/// running count passes it), 64 KiB of head, 4 KiB per chunk-size line, 64 KiB of trailers.
struct HTTPResponseReader {
    enum Outcome: Equatable {
        case needMore
        /// A 2xx response's whole body.
        case body([UInt8])
        /// Any other final status, reported at its head; the body is not returned (nor waited for).
        case status(Int)
    }

    enum Failure: Error, Equatable {
        case malformed(String)
        case tooLarge
    }

    static let maxHeadBytes = 64 * 1024
    static let maxChunkLineBytes = 4 * 1024
    static let maxTrailerBytes = 64 * 1024
    static let maxInterimResponses = 16

    let maxBytes: Int
    private var state = State.head
    private var pending: [UInt8] = []
    private var body: [UInt8] = []
    private var trailerBytes = 0
    /// The response allows the connection to be reused (HTTP/1.1, no `Connection: close`, not framed by the close).
    private var persistent = false
    /// The final status of an error answer.
    private var errorStatus = 0
    private var interimResponses = 0
    /// How far past the current position a line end was already looked for, so a server that sends one byte at a
    /// time costs linear work, not quadratic.
    private var scanned = 0

    private enum State: Equatable {
        case head
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        case untilClose
        case done
    }

    /// Whether the connection may carry another request: the response is complete, allowed persistence, and nothing
    /// came after it (bytes past the end of a response would be read as the next one's).
    var reusable: Bool { state == .done && persistent && pending.isEmpty }

    /// Whether any byte of a response has arrived: a connection that ends before that may be one the server closed
    /// while it was idle, and the request may be sent again on a new one (RFC 9112 §9.3.1).
    private(set) var started = false

    /// The outcome of a complete response.
    private var finished: Outcome { errorStatus == 0 ? .body(body) : .status(errorStatus) }

    init(maxBytes: Int) { self.maxBytes = max(0, maxBytes) }

    /// Takes the next bytes from the connection.
    mutating func receive(_ bytes: some Collection<UInt8>) throws(Failure) -> Outcome {
        if !bytes.isEmpty { started = true }
        if state == .done {
            // Past the end of the response: kept, so the connection is not taken for reusable.
            pending.append(contentsOf: bytes)
            return finished
        }
        // A body of declared length goes straight into `body`, not through `pending` first.
        if case .fixed(let remaining) = state, pending.isEmpty {
            let n = min(remaining, bytes.count)
            body.append(contentsOf: bytes.prefix(n))
            guard n == remaining else {
                state = .fixed(remaining: remaining - n)
                return .needMore
            }
            state = .done
            pending.append(contentsOf: bytes.dropFirst(n))
            return .body(body)
        }
        pending.append(contentsOf: bytes)
        return try advance()
    }

    /// The server closed the connection.
    mutating func end() throws(Failure) -> Outcome {
        switch state {
        case .done, .untilClose:
            state = .done
            persistent = false
            return finished
        default:
            throw .malformed("connection closed before the response ended")
        }
    }

    private mutating func advance() throws(Failure) -> Outcome {
        var i = 0
        defer { pending.removeFirst(i) }
        while true {
            switch state {
            case .head:
                guard let end = lineEnd(crlfcrlf, from: i) else {
                    if pending.count - i > Self.maxHeadBytes { throw .malformed("response head too large") }
                    return .needMore
                }
                guard end - i <= Self.maxHeadBytes else { throw .malformed("response head too large") }
                let head = try Head(pending[i..<end])
                i = end + 4
                if let outcome = try begin(head) {
                    // An error answer's body, when it is all here already, is dropped to keep the connection.
                    if errorStatus != 0, errorStatus != 304, persistent {
                        if let length = head.contentLength, length <= pending.count - i {
                            i += length
                        } else {
                            persistent = false
                        }
                    }
                    return outcome
                }
            case .fixed(let remaining):
                let n = min(remaining, pending.count - i)
                body.append(contentsOf: pending[i..<(i + n)])
                i += n
                if n == remaining {
                    state = .done
                    return .body(body)
                }
                state = .fixed(remaining: remaining - n)
                return .needMore
            case .untilClose:
                guard body.count + (pending.count - i) <= maxBytes else { throw .tooLarge }
                body.append(contentsOf: pending[i...])
                i = pending.count
                return .needMore
            case .chunkSize:
                guard let end = lineEnd(crlf, from: i) else {
                    if pending.count - i > Self.maxChunkLineBytes { throw .malformed("chunk size line too long") }
                    return .needMore
                }
                guard end - i <= Self.maxChunkLineBytes else { throw .malformed("chunk size line too long") }
                let size = try chunkSize(pending[i..<end])
                i = end + 2
                if size == 0 {
                    state = .trailers
                } else {
                    guard size <= maxBytes - body.count else { throw .tooLarge }
                    state = .chunkData(remaining: size)
                }
            case .chunkData(let remaining):
                let n = min(remaining, pending.count - i)
                body.append(contentsOf: pending[i..<(i + n)])
                i += n
                guard n == remaining else {
                    state = .chunkData(remaining: remaining - n)
                    return .needMore
                }
                state = .chunkDataEnd
            case .chunkDataEnd:
                guard pending.count - i >= 2 else { return .needMore }
                guard pending[i] == 0x0D, pending[i + 1] == 0x0A else { throw .malformed("chunk not followed by CRLF") }
                i += 2
                state = .chunkSize
            case .trailers:
                guard let end = lineEnd(crlf, from: i) else {
                    if trailerBytes + pending.count - i > Self.maxTrailerBytes {
                        throw .malformed("trailers too large")
                    }
                    return .needMore
                }
                trailerBytes += end - i + 2
                guard trailerBytes <= Self.maxTrailerBytes else { throw .malformed("trailers too large") }
                let empty = end == i
                i = end + 2
                if empty {
                    state = .done
                    return .body(body)
                }
            case .done:
                return finished
            }
        }
    }

    /// Where `terminator` starts at or after `i`, looking only at bytes not examined before (less the terminator's
    /// length, which may have been cut between two reads).
    private mutating func lineEnd(_ terminator: [UInt8], from i: Int) -> Int? {
        let start = i + max(0, scanned - (terminator.count - 1))
        if let end = find(terminator, in: pending, from: start) {
            scanned = 0
            return end
        }
        scanned = pending.count - i
        return nil
    }

    /// Chooses how the body is framed once a head is read; an outcome when the response is complete already.
    private mutating func begin(_ head: Head) throws(Failure) -> Outcome? {
        switch head.status {
        case 101: throw .malformed("unexpected protocol switch")
        case 100..<200:
            // Interim: the final response follows.
            interimResponses += 1
            guard interimResponses <= Self.maxInterimResponses else { throw .malformed("too many interim responses") }
            return nil
        case 200..<300: break
        default:
            // The body is not wanted. The connection can be kept if it has none (304) or one of declared length
            // (dropped by the caller when it is all here); a chunked one is not read.
            errorStatus = head.status
            persistent = head.persistent && (head.status == 304 || (!head.chunked && head.contentLength != nil))
            state = .done
            return .status(head.status)
        }
        persistent = head.persistent && (head.chunked || head.contentLength != nil || head.status == 204)
        if head.status == 204 {
            state = .done
            return .body([])
        }
        if head.chunked {
            state = .chunkSize
        } else if let length = head.contentLength {
            guard length <= maxBytes else { throw .tooLarge }
            body.reserveCapacity(length)
            state = length == 0 ? .done : .fixed(remaining: length)
            if length == 0 { return .body([]) }
        } else {
            state = .untilClose
        }
        return nil
    }

    private func chunkSize(_ line: ArraySlice<UInt8>) throws(Failure) -> Int {
        var size = 0
        var digits = 0
        for byte in line {
            let value: Int
            switch byte {
            case 0x30...0x39: value = Int(byte - 0x30)
            case 0x41...0x46: value = Int(byte - 0x41 + 10)
            case 0x61...0x66: value = Int(byte - 0x61 + 10)
            case UInt8(ascii: ";"), UInt8(ascii: " "), UInt8(ascii: "\t"):
                // A chunk extension (or whitespace before one) follows; it is ignored (RFC 9112 §7.1.1).
                guard digits > 0 else { throw .malformed("bad chunk size") }
                return size
            default: throw .malformed("bad chunk size")
            }
            digits += 1
            guard digits <= 15 else { throw .malformed("chunk size too large") }
            size = size * 16 + value
        }
        guard digits > 0 else { throw .malformed("bad chunk size") }
        return size
    }

    /// A parsed response head: status, the two framing fields, and whether the connection persists.
    struct Head {
        let status: Int
        let chunked: Bool
        let contentLength: Int?
        /// HTTP/1.1, no `close` among the `Connection` options (RFC 9112 §9.3), and not both Transfer-Encoding and
        /// Content-Length (read as chunked, but §6.3 says it ought to be handled as an error). An HTTP/1.0 answer
        /// closes, even with `keep-alive`: that older scheme is not used.
        let persistent: Bool

        init(_ bytes: ArraySlice<UInt8>) throws(Failure) {
            // Lines end in CRLF; a bare CR or LF is refused (RFC 9112 §2.2 lets a recipient refuse them).
            var lines: [ArraySlice<UInt8>] = []
            var start = bytes.startIndex
            var k = start
            while k < bytes.endIndex {
                switch bytes[k] {
                case 0x0D:
                    guard k + 1 < bytes.endIndex, bytes[k + 1] == 0x0A else {
                        throw .malformed("bare CR in response head")
                    }
                    lines.append(bytes[start..<k])
                    k += 2
                    start = k
                case 0x0A, 0x00: throw .malformed("bare LF or NUL in response head")
                default: k += 1
                }
            }
            lines.append(bytes[start..<bytes.endIndex])
            let statusLine = lines.removeFirst()
            let prefix = Array("HTTP/1.".utf8)
            guard statusLine.count >= 12, statusLine.starts(with: prefix),
                let minor = statusLine.dropFirst(7).first, (0x30...0x39).contains(minor),
                statusLine[statusLine.startIndex + 8] == 0x20,
                statusLine.count == 12 || statusLine[statusLine.startIndex + 12] == 0x20
            else { throw .malformed("bad status line") }
            var status = 0
            for byte in statusLine[(statusLine.startIndex + 9)..<(statusLine.startIndex + 12)] {
                guard (0x30...0x39).contains(byte) else { throw .malformed("bad status code") }
                status = status * 10 + Int(byte - 0x30)
            }
            guard status >= 100 else { throw .malformed("bad status code") }
            self.status = status
            var persistent = minor >= 0x31
            var chunked = false
            var transferEncoding = false
            var contentLength: Int?
            for line in lines {
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex else {
                    throw .malformed("bad header line")
                }
                let name = line[..<colon]
                // RFC 9112 §5.1 (no whitespace before the colon), §5.2 (no folding): both start with SP or HTAB.
                guard name.allSatisfy(isTokenByte) else { throw .malformed("bad header name") }
                let value = trimmed(line[(colon + 1)...])
                if equalsIgnoringCase(name, "transfer-encoding") {
                    // One line, one coding: chunked applied twice (or split over lines) is refused (RFC 9112 §6.1).
                    guard !transferEncoding else { throw .malformed("more than one Transfer-Encoding") }
                    transferEncoding = true
                    // Only chunked is understood; it must be the final coding (RFC 9112 §6.1), and nothing is
                    // decoded beyond it.
                    let codings = value.split(separator: UInt8(ascii: ",")).map(trimmed)
                    guard codings.count == 1, equalsIgnoringCase(codings[0], "chunked") else {
                        throw .malformed("unsupported transfer coding")
                    }
                    chunked = true
                } else if equalsIgnoringCase(name, "connection") {
                    for option in value.split(separator: UInt8(ascii: ","))
                    where equalsIgnoringCase(trimmed(option), "close") {
                        persistent = false
                    }
                } else if equalsIgnoringCase(name, "content-length") {
                    for item in value.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false) {
                        let digits = trimmed(item)
                        guard !digits.isEmpty, digits.count <= 18, digits.allSatisfy({ (0x30...0x39).contains($0) })
                        else { throw .malformed("bad Content-Length") }
                        let n = digits.reduce(0) { $0 * 10 + Int($1 - 0x30) }
                        guard contentLength == nil || contentLength == n else {
                            throw .malformed("conflicting Content-Length")
                        }
                        contentLength = n
                    }
                }
            }
            self.chunked = chunked
            self.persistent = persistent && !(transferEncoding && contentLength != nil)
            // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
            self.contentLength = transferEncoding ? nil : contentLength
        }
    }
}

private let crlf: [UInt8] = [0x0D, 0x0A]
private let crlfcrlf: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A]

/// The index where `needle` starts in `haystack` at or after `from`.
private func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
    guard haystack.count - from >= needle.count else { return nil }
    var i = from
    let last = haystack.count - needle.count
    while i <= last {
        if haystack[i] == needle[0] {
            var k = 1
            while k < needle.count, haystack[i + k] == needle[k] { k += 1 }
            if k == needle.count { return i }
        }
        i += 1
    }
    return nil
}

/// RFC 9110 §5.6.2 token characters: digits, letters and ``!#$%&'*+-.^_`|~``.
private func isTokenByte(_ b: UInt8) -> Bool {
    switch b {
    case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x21, 0x23...0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E...0x60, 0x7C, 0x7E:
        return true
    default: return false
    }
}

private func trimmed(_ s: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
    var s = s
    while let f = s.first, f == 0x20 || f == 0x09 { s = s.dropFirst() }
    while let l = s.last, l == 0x20 || l == 0x09 { s = s.dropLast() }
    return s
}

/// ASCII case-insensitive comparison with a lowercase name (a plain loop: no generic sequence types to instantiate in
/// a process that runs once).
private func equalsIgnoringCase(_ s: ArraySlice<UInt8>, _ lower: StaticString) -> Bool {
    guard s.count == lower.utf8CodeUnitCount else { return false }
    let name = lower.utf8Start
    var k = 0
    for byte in s {
        let wanted = name[k]
        guard byte == wanted || (byte | 0x20) == wanted else { return false }
        k += 1
    }
    return true
}
