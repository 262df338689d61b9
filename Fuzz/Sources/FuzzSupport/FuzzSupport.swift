import Crypto

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Helpers shared by the fuzz targets: input splitting, deterministic test keys, and the seed writer.
public enum FuzzSupport {
    /// The input as an array.
    public static func bytes(_ data: UnsafePointer<UInt8>, _ size: Int) -> [UInt8] {
        Array(UnsafeBufferPointer(start: data, count: size))
    }

    /// Deterministic bytes for a label: fixed test keys generated at start, so that seeds signed with them stay valid
    /// from run to run while no key material is stored in the corpus. Never use these keys for anything else.
    public static func testBytes(_ label: String, count: Int = 32) -> [UInt8] {
        var out: [UInt8] = []
        var counter: UInt8 = 0
        while out.count < count {
            out += SHA256.hash(data: Array("bulwark-fuzz-test-key/\(label)/".utf8) + [counter])
            counter &+= 1
        }
        return Array(out.prefix(count))
    }

    /// Splits `bytes` at each `separator`, at most `maxFields` fields (the last one keeps the rest, separators and all).
    public static func fields(_ bytes: ArraySlice<UInt8>, separator: UInt8, maxFields: Int) -> [ArraySlice<UInt8>] {
        var result: [ArraySlice<UInt8>] = []
        var start = bytes.startIndex
        var index = bytes.startIndex
        while index < bytes.endIndex, result.count < maxFields - 1 {
            if bytes[index] == separator {
                result.append(bytes[start..<index])
                start = index + 1
            }
            index += 1
        }
        result.append(bytes[start..<bytes.endIndex])
        return result
    }

    /// Reports an invariant violation: a crash, so libFuzzer records the input.
    public static func violated(_ message: String, file: StaticString = #file, line: UInt = #line) -> Never {
        fatalError("fuzz invariant violated: \(message)", file: file, line: line)
    }

    /// When the environment names a directory in `BULWARK_FUZZ_WRITE_SEEDS`, writes `seeds` there (one file each,
    /// named by a hash of its content) and exits. Call from `LLVMFuzzerInitialize`: `scripts/fuzz-seeds` in
    /// Fuzz/README.md regenerates the hand-made part of each corpus this way.
    public static func writeSeedsIfRequested(_ seeds: () -> [[UInt8]]) {
        guard let directory = getenv("BULWARK_FUZZ_WRITE_SEEDS").map({ String(cString: $0) }), !directory.isEmpty
        else { return }
        var written = 0
        for seed in seeds() {
            let name = "seed-" + SHA256.hash(data: seed).prefix(10).map { hex($0) }.joined()
            let path = directory + "/" + name
            guard let file = fopen(path, "wb") else { fatalError("cannot write \(path)") }
            _ = seed.withUnsafeBufferPointer { fwrite($0.baseAddress, 1, $0.count, file) }
            fclose(file)
            written += 1
        }
        print("wrote \(written) seeds to \(directory)")
        exit(0)
    }

    /// With `BULWARK_FUZZ_TRACE` set, prints which accepting paths an input reached (to check that seeds get past
    /// the signatures and checksums they are made for: run the target on its corpus with `-runs=0`).
    public static func trace(_ event: @autoclosure () -> String) {
        if tracing { print("trace: \(event())") }
    }

    public static func hex(_ byte: UInt8) -> String {
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 15)]], as: UTF8.self)
    }
}

let tracing = getenv("BULWARK_FUZZ_TRACE") != nil

/// Declares `LLVMFuzzerInitialize` behaviour in one line per target.
public typealias FuzzArgc = UnsafeMutablePointer<CInt>
public typealias FuzzArgv = UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>
