#!/usr/bin/env python3
"""Prints an HS256 access token shaped like Supabase's, for the benchmarks.

    scripts/token.py USER_ID EMAIL SECRET
"""
import base64
import hashlib
import hmac
import json
import sys
import time

sub, email, secret = sys.argv[1:4]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": sub, "email": email, "role": "authenticated",
    "aud": "authenticated", "iat": now, "exp": now + 3600}).encode())
sig = b64(hmac.new(secret.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest())
print(f"{header}.{claims}.{sig}")
