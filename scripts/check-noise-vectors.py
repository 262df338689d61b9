#!/usr/bin/env python3
"""An independent Noise XK/XKpsk3 implementation (Python `cryptography`) that checks our published vectors.

It first reproduces the public cacophony vectors (X25519), which shows this checker is right, then checks
vectors/noise-xkpsk3-p256-aesgcm-sha256.json, which our Swift implementation generated. Prints
'N passed, N failed'.
"""
import hashlib, hmac, json, struct, sys
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

root = Path(__file__).resolve().parent.parent

def hkdf(ck, ikm, n):
    temp = hmac.new(ck, ikm, hashlib.sha256).digest()
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = hmac.new(temp, prev + bytes([i]), hashlib.sha256).digest()
        out.append(prev)
    return out

class DH25519:
    publen = 32
    def __init__(self, priv): self.k = x25519.X25519PrivateKey.from_private_bytes(priv)
    def pub(self): return self.k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    def dh(self, pub): return self.k.exchange(x25519.X25519PublicKey.from_public_bytes(pub))

class DHP256:
    publen = 65
    def __init__(self, priv): self.k = ec.derive_private_key(int.from_bytes(priv, "big"), ec.SECP256R1())
    def pub(self): return self.k.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    def dh(self, pub): return self.k.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub))

class Cipher:
    def __init__(self, name, key): self.name, self.k, self.n = name, key, 0
    def nonce(self):
        return b"\0" * 4 + (struct.pack(">Q", self.n) if self.name == "AESGCM" else struct.pack("<Q", self.n))
    def enc(self, ad, pt):
        if self.k is None: return pt
        aead = AESGCM(self.k) if self.name == "AESGCM" else ChaCha20Poly1305(self.k)
        ct = aead.encrypt(self.nonce(), pt, ad); self.n += 1; return ct

class Party:
    def __init__(self, name, initiator, prologue, s, e, rs, psks, dhcls, cipher):
        self.h = name.encode().ljust(32, b"\0") if len(name) <= 32 else hashlib.sha256(name.encode()).digest()
        self.ck, self.c, self.cipher = self.h, Cipher(cipher, None), cipher
        self.initiator, self.s, self.e_priv, self.rs, self.re, self.psks = initiator, s, e, rs, None, list(psks)
        self.dhcls, self.e = dhcls, None
        self.psk = "psk" in name.split("_")[1]
        self.mix_hash(prologue)
        self.mix_hash(rs if initiator else s.pub())  # <- s
    def mix_hash(self, d): self.h = hashlib.sha256(self.h + d).digest()
    def mix_key(self, ikm): self.ck, k = hkdf(self.ck, ikm, 2); self.c = Cipher(self.cipher, k)
    def mix_key_and_hash(self, ikm):
        self.ck, th, k = hkdf(self.ck, ikm, 3); self.mix_hash(th); self.c = Cipher(self.cipher, k)
    def enc_hash(self, pt): ct = self.c.enc(self.h, pt); self.mix_hash(ct); return ct
    def write(self, tokens, payload):
        out = b""
        for t in tokens:
            if t == "e":
                self.e = self.dhcls(self.e_priv); out += self.e.pub(); self.mix_hash(self.e.pub())
                if self.psk: self.mix_key(self.e.pub())
            elif t == "s": out += self.enc_hash(self.s.pub())
            elif t == "psk": self.mix_key_and_hash(self.psks.pop(0))
            else: self.mix_key(self.dh_token(t))
        return out + self.enc_hash(payload)
    def read_keys(self, tokens, msg):
        # Only what a writer needs to continue: remember the peer's ephemeral and static keys.
        i = 0
        for t in tokens:
            if t == "e":
                self.re = msg[i:i + self.dhcls.publen]; i += self.dhcls.publen; self.mix_hash(self.re)
                if self.psk: self.mix_key(self.re)
            elif t == "s":
                n = self.dhcls.publen + (16 if self.c.k else 0); ct = msg[i:i + n]; i += n
                if self.c.k: self.c.n += 1  # DecryptAndHash advances the nonce
                self.mix_hash(ct); self.rs = self.peer_static
            elif t == "psk": self.mix_key_and_hash(self.psks.pop(0))
            else: self.mix_key(self.dh_token(t))
        if self.c.k: self.c.n += 1
        self.mix_hash(msg[i:])
    def dh_token(self, t):
        local_e = (t[0] == "e") if self.initiator else (t[1] == "e")
        remote_e = (t[1] == "e") if self.initiator else (t[0] == "e")
        local = self.e if local_e else self.s
        return local.dh(self.re if remote_e else self.rs)

PATTERN = [["e", "es"], ["e", "ee"], ["s", "se"]]

def run(v):
    name = v["protocol_name"]; _, pat, dh, cipher, _ = name.split("_")
    dhcls = DH25519 if dh == "25519" else DHP256
    tokens = [m + (["psk"] if pat == "XKpsk3" and i == 2 else []) for i, m in enumerate(PATTERN)]
    b = bytes.fromhex
    i = Party(name, True, b(v["init_prologue"]), dhcls(b(v["init_static"])), b(v["init_ephemeral"]),
              b(v["init_remote_static"]), [b(p) for p in v.get("init_psks", [])], dhcls, cipher)
    r = Party(name, False, b(v["resp_prologue"]), dhcls(b(v["resp_static"])), b(v["resp_ephemeral"]), None,
              [b(p) for p in v.get("resp_psks", [])], dhcls, cipher)
    i.peer_static, r.peer_static = None, dhcls(b(v["init_static"])).pub()
    for n, m in enumerate(v["messages"][:3]):
        w, rd = (i, r) if n % 2 == 0 else (r, i)
        ct = w.write(tokens[n], b(m["payload"]))
        if ct.hex() != m["ciphertext"]: return f"message {n} differs"
        rd.read_keys(tokens[n], ct)
    if i.h.hex() != v["handshake_hash"] or r.h.hex() != v["handshake_hash"]: return "handshake hash differs"
    k1, k2 = hkdf(i.ck, b"", 2)
    send = {True: Cipher(cipher, k1), False: Cipher(cipher, k2)}
    for n, m in enumerate(v["messages"][3:], start=3):
        if send[n % 2 == 0].enc(b"", b(m["payload"])).hex() != m["ciphertext"]: return f"transport message {n} differs"
    return None

passed = failed = 0
sources = [(root / "Tests/PairingTests/Fixtures/cacophony-xk.json", "cacophony"),
           (root / "vectors/noise-xkpsk3-p256-aesgcm-sha256.json", "bulwark")]
for path, origin in sources:
    for v in json.load(open(path))["vectors"]:
        problem = run(v)
        print(("ok   " if problem is None else "FAIL ") + f"{origin} {v['protocol_name']}" + (f": {problem}" if problem else ""))
        passed, failed = (passed + 1, failed) if problem is None else (passed, failed + 1)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
