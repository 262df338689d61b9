/// Test vectors produced by Python reference code, embedded so the test target needs no
/// resource bundle. Regenerate with the tuf-conformance venv (securesystemslib 1.4.0,
/// cryptography) using:
///
/// ```python
/// import json
/// from securesystemslib.formats import encode_canonical
/// from cryptography.hazmat.primitives.asymmetric import rsa, padding
/// from cryptography.hazmat.primitives import hashes, serialization
/// doc = {"z": 1, "é": "x", "e\u0301": "y", "ä": [True, None, False],
///        "a": {"\U0001F600": "emoji", "\uFB01": "ligature", "Z": -5},
///        "q": "quote\" back\\slash\nnewline\ttab \u2028 é", "empty": {}, "arr": []}
/// print(json.dumps(doc), encode_canonical(doc).encode().hex())
/// key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
/// msg = b'{"_type":"root","version":1}'
/// for salt in [padding.PSS.DIGEST_LENGTH, padding.PSS.MAX_LENGTH, 0, 20]:
///     print(key.sign(msg, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt),
///                    hashes.SHA256()).hex())
/// print(key.sign(msg, padding.PKCS1v15(), hashes.SHA256()).hex())
/// ```
enum Vectors {
    /// `json.dumps(doc)`: the input document.
    static let canonicalInput =
        #"{"z": 1, "\u00e9": "x", "e\u0301": "y", "\u00e4": [true, null, false], "a": {"\ud83d\ude00": "emoji", "\ufb01": "ligature", "Z": -5}, "q": "quote\" back\\slash\nnewline\ttab \u2028 \u00e9", "empty": {}, "arr": []}"#

    /// `encode_canonical(doc).encode("utf-8").hex()`.
    static let canonicalHex =
        "7b2261223a7b225a223a2d352c22efac81223a226c69676174757265222c22f09f9880223a22656d6f6a69227d2c22617272223a5b5d2c22656d707479223a7b7d2c2265cc81223a2279222c2271223a2271756f74655c22206261636b5c5c736c6173680a6e65776c696e650974616220e280a820c3a9222c227a223a312c22c3a4223a5b747275652c6e756c6c2c66616c73655d2c22c3a9223a2278227d"

    static let rsaPublicPEM = """
        -----BEGIN PUBLIC KEY-----
        MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA4493JmPP1USRgvwSphbY
        9PhWGl6qprC381umMNXE24I+LV2aHpTDfYkdTCCbO2Oi2vOz9+LQYgL1SGaFj3uC
        dTdxdOOyvfLl9XiF6Jec8/E7eo8MAKy06uHw0/Li29OCw/NtXFSJ1FU7Qc495mcp
        GU0o0pRwKcPuVwzwTSPpEWtufZiqeCHxITSsQRh4jtXrsZohgVlyPdUuf8zpumM4
        gWGWkUp+USvZLJ3tJEes+/yTQS/ehR76IHQoGWKIi3mXL74v55vEGlmVcSPffew9
        Ydy9CEVQEIqhIJjFrnemYRrEG8bCAYcDtQanJpYUuBI5bkBhauqdWS/kowj1q975
        2wIDAQAB
        -----END PUBLIC KEY-----
        """

    static let rsaMessageHex = "7b225f74797065223a22726f6f74222c2276657273696f6e223a317d"

    /// RSASSA-PSS (SHA-256, MGF1-SHA-256) signatures by salt length.
    static let rsaPSS: [String: String] = [
        "digest":
            "6065de9f922942eee272470e2ae7f7da2d445bcdf79b8cec6bc59ef01772d73f2653d6de00034464c6fe46d0a5181a375cfb06fca20601dd9f633b3a442092c4b80b2cc21d61fb9d098d0e711ca83d3a717f665d657c0f057afbb13d44e405858603daa6e1a31607f322e888e73f4ea8eec80a06dca98808241bda61ff0616b37c32b4b590f78ee1dc0aabc6b84694df38c02b359e8cc61021834762cae87b086860570452b9f136df7299fd2e92198b40a2d31c23d9578e5f0f502cd1a397624c39e489065b3b714d6707f7d3700902abd0acf527e961dc1950bebc72320ae1f9ad66239853b61266a48174c33f9d7633bab581bc498557ca88444e8487ca7e",
        "max":
            "8cb07354ce066640491f37d5b7fca2e850270bd131696e0c44eedada869f044b14e775d45903f566cf2be697eceea167680fc52eb2dd759b925a4965da09b997f798e329b3622a4a124915b9267a53dd5c16c2d39d66e34b4e48e44e47642afd9d2a549ed6a7885b30a66534f370e9b12b2e7e2de3b452101e49e3b89220e461ee4227716111e140ed0a2fea8abe223de2f94553030463049fcac00ca9bb616cee0b1e68fe1d24b1f7e16a44a605311aa45ca0a610e94c6d21617a8c28113afd93c95c29093dcbeddc6e12f3347b61892845e1cf4e6e4b3708c936dd2775cd1f3d5e2454588808e283132ef3ef74bc3e2912619eb14560b2ecf4fb6e602d3d6a",
        "zero":
            "dc01f26a3bd0776b33d5668ea23ab34065cce2059dda7d3efec321682cb2ceba8555a6f84df08509bd728bb435030919bd0155bfea3f272748eb0e0141375cb7eed0be0ce1fd8d1fbca29255dadaeef6e61faebb9a57b52878e693ec1f607ae8308f4fcf7bf91226561f0256f8cedf32ee67b6184c01961ed28df7b0e03a33c973a927562495e8cee851e8f9def3b0a9a523d801279c71e56547428ce361bae440c4d257ee61dc1b33bc318f64283686f01dfe47832f534f16d509890ac9ce10b2b82d16bc200639d9a856b7868052baf39c662c7ed69bbd8ad4b337bcbc64be4e0776f579e52e6bb32c066af73508e093bb426c9bb247e33b6db32bf926f060",
        "salt20":
            "86e3f4e44a866b3b50bb3b46a096abcb9cd08d550dff390f905e40392cbee444f7df489b75f6e7251ae7b35a6df0dc15103d08aee01d92775c64fc07f75aed5392a3a88d847650f051d557fa48d10bc5e1641ca562fa40c3c004c06be1a86a1fd3855290b54b63b2ccaebe12b621fc76327d2580e8975448edbfabd818f05ef7289c7f5372311aefab270d239190986ebb06c9e17de78aac7389330b662af609ea7457b14ee2bc7e6bc2ee4a284f62f7120948ef03784ce058af8551511c8ffac9778b2437475783ea2e3ba770a02561ff9fac938f4d4688c01c6201fc07b48ac9184247cf4cba5f93b3e995785d6fcc300450331b6dea7026223ffe83b9d6b0",
    ]

    static let rsaPKCS1v15 =
        "b6045c05fbe3b586271e252426aedd606746c4e3f06e55e6253bed3aee57da7073b4a97fcb234352d0070376a014123c707050f7890acaa295005c176bf46a7d624b6c023f64ad1b7ee2c3b1467749015fcbeb0631bb9e9f73578d0d94c8aa93ae08d7d83cfde9ab61c434e3be2a2fd934c99e49202265beaa66f7ecf290e75ac6b8ed7f589895a0acc4426376b72b22770be6aebcf296c1d89b3d0e3019fa32bb4bda17281ef5f1bc5df445d5c833adc868b4b74386219ac14231b72abcd3c8cdb3a52327f70eb615b69da48512988051e5c326bd723893e3744ce08b69a6e8f0def6e0a339027a79f418ab42f299bde77ff272e1b2dfa0ebd443d61bfc894e"
}
