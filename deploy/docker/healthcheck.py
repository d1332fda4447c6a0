"""Container health check: GET http://127.0.0.1:PORT/healthz, exit 0 on HTTP 200.

    quakescan-healthcheck [PORT]

With no PORT it uses QUAKESCAN_METRICS_PORT, else it tries the ports of the
service subcommands in turn (serve 9100, worker 9101, feed 9102, sink 9103) and
judges the first one that answers, so one image-level HEALTHCHECK fits whichever
subcommand the container runs. Exit 1 (unhealthy) on any other status, a
timeout, or when no port answers. Standard library only.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORTS = (9100, 9101, 9102, 9103)
TIMEOUT_S = 4.0


def check(port: int, host: str = "127.0.0.1", timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, message) for one port; raises ConnectionRefusedError when nothing listens."""
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = resp.read(2000).decode("utf-8", "replace")
            return resp.status == 200, f"{url}: {resp.status} {body}"
    except urllib.error.HTTPError as exc:
        body = exc.read(2000).decode("utf-8", "replace")
        return False, f"{url}: {exc.code} {body}"
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            raise exc.reason from None
        return False, f"{url}: {exc.reason}"
    except TimeoutError:
        return False, f"{url}: no answer within {timeout_s} s"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        ports = [int(argv[0])]
    elif os.environ.get("QUAKESCAN_METRICS_PORT"):
        ports = [int(os.environ["QUAKESCAN_METRICS_PORT"])]
    else:
        ports = list(DEFAULT_PORTS)
    for port in ports:
        try:
            healthy, message = check(port)
        except ConnectionRefusedError:
            continue
        print(message)
        return 0 if healthy else 1
    print(f"unhealthy: nothing answers /healthz on port(s) {', '.join(map(str, ports))}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
