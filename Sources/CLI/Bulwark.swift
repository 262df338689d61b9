@main struct Bulwark { static func main() {} }
