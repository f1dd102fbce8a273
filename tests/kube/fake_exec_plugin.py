"""A fake kubeconfig exec credential plugin for tests/kube/test_exec_auth.py.

Counts its runs in ``$FAKE_EXEC_COUNT``; prints line N of ``$FAKE_EXEC_TOKENS`` (the last line
once N passes the end) as the token, with ``$FAKE_EXEC_EXPIRES`` (RFC 3339) as the expiry if set,
or ``$FAKE_EXEC_CERT`` / ``$FAKE_EXEC_KEY`` (PEM files) as a client certificate. Answers in the
apiVersion ``KUBERNETES_EXEC_INFO`` asked for, as a real plugin does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
    if info.get("spec", {}).get("interactive") is not False:
        print("expected a non-interactive run", file=sys.stderr)
        return 2
    counter = Path(os.environ["FAKE_EXEC_COUNT"])
    runs = int(counter.read_text() or "0") + 1 if counter.exists() else 1
    counter.write_text(str(runs))
    status: dict[str, str] = {}
    if os.environ.get("FAKE_EXEC_CERT"):
        status["clientCertificateData"] = Path(os.environ["FAKE_EXEC_CERT"]).read_text()
        status["clientKeyData"] = Path(os.environ["FAKE_EXEC_KEY"]).read_text()
    else:
        tokens = Path(os.environ["FAKE_EXEC_TOKENS"]).read_text().split()
        status["token"] = tokens[min(runs, len(tokens)) - 1]
    if os.environ.get("FAKE_EXEC_EXPIRES"):
        status["expirationTimestamp"] = os.environ["FAKE_EXEC_EXPIRES"]
    print(json.dumps({"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": status}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
