"""Schemathesis hooks for vitalbridge (tests/api/openapi.rs runs them).

Access tokens live five minutes (issue 4), shorter than a run: a fresh one is fetched by
client_credentials with HTTP Basic at the token endpoint the SMART configuration names, every
four minutes and whenever the server answers 401.
"""

import os
from urllib.parse import quote_plus

import requests
import schemathesis

BASE = os.environ["VB_ST_ORIGIN"]
# RFC 6749 section 2.3.1: form-urlencoded, then HTTP Basic.
CLIENT = (quote_plus(os.environ["VB_ST_CLIENT_ID"]), quote_plus(os.environ["VB_ST_CLIENT_SECRET"]))


@schemathesis.auth(refresh_interval=240)
class SmartBackendServices:
    def get(self, case, context):
        smart = requests.get(f"{BASE}/fhir/.well-known/smart-configuration", timeout=10).json()
        r = requests.post(
            smart["token_endpoint"],
            auth=CLIENT,
            data={"grant_type": "client_credentials", "scope": "system/*.cruds"},
            timeout=10,
        )
        r.raise_for_status()
        return r.json()["access_token"]

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
