#!/usr/bin/env python3
"""Writes the token and upload seeds of corpus/ (the media seeds are small files cut from the samples
with ffmpeg). The tokens are signed with the secret of src/fuzzing.rs, so mutations start past the
signature check. Run from fuzz/: python3 make_seeds.py"""
import base64, hashlib, hmac, json, os

SECRET = b"fuzzing-secret-0123456789abcdef-0123456789"
KID = "hs-" + hashlib.sha256(SECRET).hexdigest()[:16]
ISS, AUD = "https://fuzz.sonicgw.test", "sonicgw"
USER, TENANT = "0190f5a2-7d3c-7a4b-9c1e-2f3a4b5c6d7e", "0190f5a2-7d3c-7a4b-9c1e-000000000001"
JTI = "0190f5a2-7d3c-7a4b-9c1e-00000000aaaa"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(header: bytes, claims: bytes) -> str:
    head = f"{b64(header)}.{b64(claims)}"
    mac = hmac.new(SECRET, head.encode(), hashlib.sha256).digest()
    return f"{head}.{b64(mac)}"


def dump(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


header = {"alg": "HS256", "typ": "at+jwt", "kid": KID}
user = {"iss": ISS, "aud": AUD, "sub": USER, "tid": TENANT, "role": "admin", "plan": "pro",
        "scope": "videos admin", "iat": 1764300000, "nbf": 1764300000, "exp": 4102444800, "jti": JTI}
worker = {"iss": ISS, "aud": AUD + ":worker", "sub": USER, "scope": "worker", "iat": 1764300000,
          "nbf": 1764300000, "exp": 4102444800, "jti": JTI, "gen": 1}
expired = dict(user, exp=1764300600)
cases = {
    "user": (header, user),
    "worker": (header, worker),
    "expired": (header, expired),
    "jku": (dict(header, jku="https://attacker.test/jwks"), user),
    "none_alg": (dict(header, alg="none"), user),
    "missing_claims": (header, {"iss": ISS, "aud": AUD, "exp": 4102444800}),
}
os.makedirs("corpus/token", exist_ok=True)
os.makedirs("corpus/token_claims", exist_ok=True)
for name, (h, c) in cases.items():
    with open(f"corpus/token/{name}", "w") as f:
        f.write(sign(dump(h), dump(c)))
    with open(f"corpus/token_claims/{name}", "wb") as f:
        f.write(dump(h) + b"\0" + dump(c))

# Multipart bodies of POST /v1/videos (boundary "fuzzboundary"), tiny files from the media seeds.
def part(name: str, value: bytes, filename: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return b"--fuzzboundary\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + value + b"\r\n"


image = open("corpus/image_probe/red4x2.png", "rb").read()
audio = open("corpus/audio_probe/s.mp3", "rb").read()
files = part("image", image, "face.png") + part("audio", audio, "speech.mp3")
bodies = {
    "defaults": files,
    "sonic_example": files + b"".join(part(k, v.encode()) for k, v in [
        ("inference_steps", "25"), ("min_resolution", "1024"), ("expand_ratio", "0.18"),
        ("dynamic_scale", "1.1"), ("motion_scale", "1.05"), ("enable_lip_sync_correction", "true"),
        ("lip_sync_offset", "0.03"), ("duration", "3.0"), ("seed", "42"), ("engine", "builtin"),
        ("callback_url", "https://example.test/hook"), ("label_language", "zh")]),
    "unknown_field": files + part("colour", b"blue"),
    "repeated_image": files + part("image", image, "again.png"),
}
os.makedirs("corpus/upload_fields", exist_ok=True)
for name, body in bodies.items():
    with open(f"corpus/upload_fields/{name}", "wb") as f:
        f.write(body + b"--fuzzboundary--\r\n")
