import Testing

@testable import TUFClient

/// RFC 9112 framing without sockets: every response is also fed one byte at a time, so no split point changes the
/// outcome.
@Suite struct HTTPResponseReaderTests {
    typealias Outcome = HTTPResponseReader.Outcome
    typealias Failure = HTTPResponseReader.Failure

    /// Feeds `text` whole and byte by byte, then the end of the connection if it asked for more; both ways must agree.
    func read(_ text: String, maxBytes: Int = 1000) -> Result<Outcome, Failure> {
        func run(_ pieces: [[UInt8]]) -> Result<Outcome, Failure> {
            var reader = HTTPResponseReader(maxBytes: maxBytes)
            do throws(Failure) {
                for piece in pieces {
                    let outcome = try reader.receive(piece)
                    if outcome != .needMore { return .success(outcome) }
                }
                return .success(try reader.end())
            } catch {
                return .failure(error)
            }
        }
        let bytes = Array(text.utf8)
        let whole = run([bytes])
        let dripped = run(bytes.map { [$0] })
        #expect(whole == dripped, "split reads disagree on \(text.debugDescription)")
        return whole
    }

    func body(_ s: String) -> Result<Outcome, Failure> { .success(.body(Array(s.utf8))) }

    @Test func contentLength() {
        #expect(read("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello") == body("hello"))
        #expect(read("HTTP/1.0 200 OK\r\ncontent-length:5\r\nServer: x\r\n\r\nhelloEXTRA") == body("hello"))
        #expect(read("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == body(""))
        #expect(read("HTTP/1.1 204 No Content\r\n\r\n") == body(""))
        #expect(read("HTTP/1.1 200\r\nContent-Length: 2, 2\r\n\r\nok") == body("ok"))
    }

    @Test func untilClose() {
        #expect(read("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end") == body("to the end"))
        #expect(read("HTTP/1.1 200 OK\r\n\r\n12345", maxBytes: 4) == .failure(.tooLarge))
    }

    @Test func chunked() {
        let text =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nA;name=value\r\n0123456789\r\n0\r\nX: y\r\n\r\n"
        #expect(read(text) == body("abc0123456789"))
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
        #expect(
            read("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                == body("ok"))
        #expect(read(text, maxBytes: 12) == .failure(.tooLarge))
        #expect(read(text, maxBytes: 13) == body("abc0123456789"))
    }

    @Test func statusesOtherThan2xxAreReportedWithoutTheBody() {
        #expect(read("HTTP/1.1 404 Not Found\r\nContent-Length: 999999\r\n\r\n") == .success(.status(404)))
        #expect(read("HTTP/1.1 403 Forbidden\r\n\r\n") == .success(.status(403)))
        #expect(read("HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n") == .success(.status(301)))
        // Interim responses are skipped.
        #expect(read("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == body("ok"))
    }

    @Test func declaredLengthOverTheLimitIsRefusedBeforeTheBody() {
        #expect(read("HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n") == .failure(.tooLarge))
        #expect(read("HTTP/1.1 200 OK\r\nContent-Length: 999999999999999999\r\n\r\n") == .failure(.tooLarge))
        #expect(
            read("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7fffffffffffffff\r\n")
                == .failure(.malformed("chunk size too large")))
        #expect(read("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n") == .failure(.tooLarge))
    }

    @Test(arguments: [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",  // closed early
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",  // no last chunk
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",  // head never ends
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 20x OK\r\n\r\n",
        "HTTP/1.1 099 Low\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",  // whitespace before the colon
        "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",  // obsolete line folding
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk",
        "HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1,\r\n\r\nx",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nx",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",  // chunk without CRLF
        "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",  // bare LF
        "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",  // bare CR
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "",
    ])
    func malformedResponsesAreRefused(_ text: String) {
        guard case .failure(let failure) = read(text) else {
            Issue.record("accepted \(text.debugDescription)")
            return
        }
        guard case .malformed = failure else {
            Issue.record("\(failure) for \(text.debugDescription)")
            return
        }
    }

    @Test func headAndTrailersAreBounded() {
        let hugeHead =
            "HTTP/1.1 200 OK\r\n"
            + String(repeating: "X-Pad: 0123456789012345678901234567890123456789\r\n", count: 2000)
        #expect(read(hugeHead + "\r\n") == .failure(.malformed("response head too large")))
        #expect(read(hugeHead) == .failure(.malformed("response head too large")))
        let trailers = String(repeating: "T: 0123456789012345678901234567890123456789\r\n", count: 2000)
        #expect(
            read("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + trailers + "\r\n")
                == .failure(.malformed("trailers too large")))
        #expect(
            read("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + String(repeating: "0", count: 5000) + "\r\n")
                == .failure(.malformed("chunk size line too long")))
    }
}

extension HTTPResponseReaderTests {
    @Test func chunkedTwiceIsRefused() {
        let text =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        #expect(read(text) == .failure(.malformed("more than one Transfer-Encoding")))
    }
}

/// RFC 9112 §9.3: whether the connection may carry the next request once a response is read.
extension HTTPResponseReaderTests {
    /// Feeds all of `text`, whole and byte by byte (without an end of connection: a kept connection has none); the
    /// first outcome that is not `needMore`, and `reusable` after the whole text, each way. Bytes that come after the
    /// response, in its last read or in a later one, must leave the connection not reusable.
    func persistence(_ text: String) -> (Outcome, Bool, Bool) {
        func run(_ pieces: [[UInt8]]) -> (Outcome, Bool) {
            var reader = HTTPResponseReader(maxBytes: 1000)
            var outcome = Outcome.needMore
            for piece in pieces {
                let next = (try? reader.receive(piece)) ?? .status(-1)
                if outcome == .needMore { outcome = next }
            }
            return (outcome, reader.reusable)
        }
        let bytes = Array(text.utf8)
        let whole = run([bytes])
        let dripped = run(bytes.map { [$0] })
        return (whole.0, whole.1, dripped.1)
    }

    @Test func aCompleteHTTP11ResponseLeavesTheConnectionReusable() {
        let ok = Outcome.body(Array("hello".utf8))
        #expect(persistence("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello") == (ok, true, true))
        #expect(
            persistence("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n") == (
                ok, true, true
            ))
        #expect(persistence("HTTP/1.1 204 No Content\r\n\r\n") == (.body([]), true, true))
        #expect(persistence("HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n") == (.status(304), true, true))
        // An error answer is reported at its head; a body of declared length that came with it is dropped and the
        // connection stays usable. One that comes later is not waited for, and the connection is not kept.
        #expect(
            persistence("HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found") == (.status(404), true, false))
        #expect(persistence("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n") == (.status(404), true, true))
    }

    @Test func aConnectionIsNotReusedWhenTheResponseSaysOrCannotTell() {
        let ok = Outcome.body(Array("hello".utf8))
        // `Connection: close`, among other options and in any case (RFC 9112 §9.6).
        #expect(
            persistence("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, CLOSE\r\n\r\nhello") == (
                ok, false, false
            ))
        // HTTP/1.0, even with the older keep-alive scheme.
        #expect(
            persistence("HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello") == (
                ok, false, false
            ))
        // Bytes after the end of the body would be read as the next answer: in the same read (whole) or a later one
        // (byte by byte, where the body went straight into it).
        #expect(
            persistence("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n") == (ok, false, false))
        #expect(
            persistence("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nX") == (
                ok, false, false
            ))
        // Both a length and chunks (RFC 9112 §6.3: ought to be handled as an error): read as chunked, not kept.
        #expect(
            persistence(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                == (ok, false, false))
        // An error body too large to drop, or without a declared length.
        #expect(persistence("HTTP/1.1 404 Not Found\r\nContent-Length: 70000\r\n\r\n") == (.status(404), false, false))
        #expect(persistence("HTTP/1.1 403 Forbidden\r\n\r\n") == (.status(403), false, false))
        #expect(persistence("HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n") == (.status(500), false, false))
        // Not yet complete.
        var reader = HTTPResponseReader(maxBytes: 10)
        #expect(!reader.started)
        #expect((try? reader.receive(Array("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel".utf8))) == .needMore)
        #expect(reader.started && !reader.reusable)
    }

    /// An error answer whose body the server cuts short: still that status.
    @Test func anErrorAnswerCutShortIsStillItsStatus() {
        #expect(read("HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot") == .success(.status(404)))
    }

    /// An interim response is a byte of the answer: a connection that ends after it is not taken for one closed while
    /// idle. And interim responses are bounded.
    @Test func interimResponsesCountAsStartedAndAreBounded() {
        var reader = HTTPResponseReader(maxBytes: 10)
        #expect((try? reader.receive(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))) == .needMore)
        #expect(reader.started)
        let many = String(repeating: "HTTP/1.1 102 Processing\r\n\r\n", count: 17) + "HTTP/1.1 200 OK\r\n\r\n"
        #expect(read(many) == .failure(.malformed("too many interim responses")))
        let some = String(repeating: "HTTP/1.1 102 Processing\r\n\r\n", count: 16)
        #expect(read(some + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") == body("ok"))
    }
}
