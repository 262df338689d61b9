/// A UTC instant with one-second resolution, as TUF writes `expires` (TUF §4.3:
/// "YYYY-MM-DDTHH:MM:SSZ"). Kept as seconds since the Unix epoch so that the pure module
/// needs no calendar or locale machinery.
public struct Timestamp8601: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let secondsSinceEpoch: Int64

    public init(secondsSinceEpoch: Int64) { self.secondsSinceEpoch = secondsSinceEpoch }

    /// Parses exactly `YYYY-MM-DDTHH:MM:SSZ`, like python-tuf's `strptime` format.
    public init(parsing text: String) throws(TUFError) {
        let u = Array(text.utf8)
        func fail() -> TUFError { TUFError(.invalidMetadata, "'expires' must be YYYY-MM-DDTHH:MM:SSZ") }
        guard u.count == 20, u[4] == 0x2D, u[7] == 0x2D, u[10] == 0x54, u[13] == 0x3A, u[16] == 0x3A, u[19] == 0x5A
        else { throw fail() }
        func num(_ r: Range<Int>) throws(TUFError) -> Int64 {
            var v: Int64 = 0
            for i in r {
                guard u[i] >= 0x30, u[i] <= 0x39 else { throw fail() }
                v = v * 10 + Int64(u[i] - 0x30)
            }
            return v
        }
        let y = try num(0..<4)
        let mo = try num(5..<7)
        let d = try num(8..<10)
        let h = try num(11..<13)
        let mi = try num(14..<16)
        let s = try num(17..<19)
        guard (1...12).contains(mo), d >= 1, d <= Timestamp8601.daysIn(month: mo, year: y), h < 24, mi < 60, s < 60
        else { throw fail() }
        self.secondsSinceEpoch = Timestamp8601.daysFromCivil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s
    }

    static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Howard Hinnant's days-from-civil algorithm (proleptic Gregorian calendar).
    static func daysFromCivil(_ y0: Int64, _ m: Int64, _ d: Int64) -> Int64 {
        let y = m <= 2 ? y0 - 1 : y0
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (m + 9) % 12
        let doy = (153 * mp + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146097 + doe - 719468
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` (Howard Hinnant's civil-from-days; proleptic Gregorian calendar, UTC).
    public var text: String {
        let seconds = secondsSinceEpoch
        let days = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
        let rem = seconds - days * 86400
        let z = days + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func two(_ v: Int64) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let year = y >= 0 && y < 1000 ? String(repeating: "0", count: 4 - "\(y)".count) + "\(y)" : "\(y)"
        return "\(year)-\(two(m))-\(two(d))T\(two(rem / 3600)):\(two(rem % 3600 / 60)):\(two(rem % 60))Z"
    }

    public static func < (a: Timestamp8601, b: Timestamp8601) -> Bool { a.secondsSinceEpoch < b.secondsSinceEpoch }

    public var description: String { "\(secondsSinceEpoch)s" }
}
