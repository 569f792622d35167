# helm test: the dispatcher's metrics Service answers and a replica reports ready
# (infra_service_ready is set by the readiness probe). Runs in the dispatcher image; prints
# one line.
import os
import sys
import urllib.request

url = os.environ["METRICS_URL"]
try:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - in-cluster URL
        text = response.read().decode()
except OSError as exc:
    print(f"FAIL: {url} did not answer: {exc}. Check the dispatcher pods and the Service.")
    sys.exit(1)
ready = [line for line in text.splitlines() if line.startswith("infra_service_ready ")]
if not ready or float(ready[0].split()[1]) != 1:
    print(f"FAIL: {url} answers but the dispatcher is not ready "
          f"({ready or 'no infra_service_ready'}): its /readyz names the failing check.")
    sys.exit(1)
print(f"OK: dispatcher ready ({url})")
