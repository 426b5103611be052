"""Schemathesis hooks for vitalbridge (tests/api/openapi.rs runs them).

Access tokens live five minutes (issue 4), shorter than a run: a fresh one is fetched by
client_credentials with HTTP Basic at the token endpoint the SMART configuration names, every
four minutes and whenever the server answers 401. Introspection and revocation take the
client's own credentials instead (the document's `clientBasic` scheme).
"""

import base64
import os
from urllib.parse import quote_plus

import requests
import schemathesis

BASE = os.environ["VB_ST_ORIGIN"]
# RFC 6749 section 2.3.1: form-urlencoded, then HTTP Basic.
CLIENT = (quote_plus(os.environ["VB_ST_CLIENT_ID"]), quote_plus(os.environ["VB_ST_CLIENT_SECRET"]))
BASIC = "Basic " + base64.b64encode(":".join(CLIENT).encode()).decode()
CLIENT_AUTHENTICATED = {"/auth/introspect", "/auth/revoke"}


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
        if case.operation.path in CLIENT_AUTHENTICATED:
            case.headers["Authorization"] = BASIC
        else:
            case.headers["Authorization"] = f"Bearer {data}"
