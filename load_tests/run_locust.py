"""Run the Locust scenarios headless, with a pass/fail verdict, CSV and an HTML report.

From the repository root::

    python -m load_tests.run_locust --users 50 --spawn-rate 10 --run-time 60s
    PUBLISH_TOKEN=... ADMIN_TOKEN=... python -m load_tests.run_locust \\
        --host https://herald.example.com --users 500 --spawn-rate 20 --run-time 5m

Without ``--host`` it starts Herald itself (``python -m app`` on a free port of
127.0.0.1, with fresh random ``PUBLISH_TOKEN`` and ``ADMIN_TOKEN``) and stops it
afterwards. Writes ``<out>/herald_stats.csv`` (and Locust's other CSV files) and
``<out>/report.html``; exits with Locust's exit code: 0 when the thresholds are
met, 1 when the failure ratio is over ``--max-fail-ratio`` or the p95 delivery
latency over ``--delivery-p95-ms`` (see ``load_tests/locustfile.py``).
Arguments after ``--`` go to Locust unchanged (e.g. ``-- --processes 2``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from tests.support.server import REPO_ROOT, ServerProcess

__all__ = ["main", "parse_args", "run_time_seconds"]

LOCUSTFILE = REPO_ROOT / "load_tests" / "locustfile.py"
CSV_PREFIX = "herald"
HTML_REPORT = "report.html"
SHUTDOWN_GRACE_SECONDS = 90
"""Beyond --run-time: Locust's start-up, stopping the users and writing the reports."""

# The self-started server: heartbeats often enough that a held stream notices
# its hold time and the read timeout is never the one to end it.
LOCAL_SERVER_ENV = {"LOG_LEVEL": "warning", "SSE_PING_SECONDS": "2"}

_TIMESPAN = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


def run_time_seconds(text: str) -> int:
    """Seconds in a Locust time span such as ``90``, ``30s``, ``5m`` or ``1h30m``."""
    match = _TIMESPAN.match(text.strip())
    if not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"not a time span: {text!r} (e.g. 30s, 5m, 1h30m)")
    hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.run_locust",
        description="Headless Locust run against Herald with thresholds; "
        "arguments after -- go to Locust.",
    )
    parser.add_argument("--host", help="a deployed Herald (default: start one on 127.0.0.1)")
    parser.add_argument("--users", type=int, default=20, help="total users (default 20)")
    parser.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second")
    parser.add_argument("--run-time", default="30s", help="e.g. 30s, 5m, 1h30m")
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for CSV and HTML (default load_tests/results/locust-<time>)",
    )
    parser.add_argument("--delivery-p95-ms", type=float, default=500.0)
    parser.add_argument("--max-fail-ratio", type=float, default=0.01)
    parser.add_argument("--min-deliveries", type=int, default=1)
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--batch-publishers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batch-p95-ms", type=float, default=500.0)
    parser.add_argument("--min-batches", type=int, default=1)
    parser.add_argument("--responders", type=int, default=1)
    parser.add_argument("--admins", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="print the summary only")
    own = list(argv if argv is not None else sys.argv[1:])
    extra: list[str] = []
    if "--" in own:
        cut = own.index("--")
        own, extra = own[:cut], own[cut + 1 :]
    args = parser.parse_args(own)
    args.run_seconds = run_time_seconds(args.run_time)
    fixed = args.publishers + args.batch_publishers + args.responders + args.admins
    counts = (args.publishers, args.batch_publishers, args.responders, args.admins)
    if min(counts) < 0 or args.users <= fixed:
        parser.error(
            f"--users ({args.users}) must exceed publishers + batch publishers + responders"
            f" + admins ({fixed}): the rest are subscribers"
        )
    return args, extra


def locust_command(
    args: argparse.Namespace, host: str, out: Path, extra: list[str], admin: bool
) -> list[str]:
    classes = ["SubscriberUser"]
    classes += ["PublisherUser"] if args.publishers else []
    classes += ["BatchPublisherUser"] if args.batch_publishers else []
    classes += ["ResponsesUser"] if args.responders else []
    classes += ["AdminUser"] if args.admins and admin else []
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "--users",
        str(args.users),
        "--spawn-rate",
        f"{args.spawn_rate:g}",
        "--run-time",
        args.run_time,
        "--csv",
        str(out / CSV_PREFIX),
        "--html",
        str(out / HTML_REPORT),
        "--delivery-p95-ms",
        f"{args.delivery_p95_ms:g}",
        "--max-fail-ratio",
        f"{args.max_fail_ratio:g}",
        "--min-deliveries",
        str(args.min_deliveries),
        "--publishers",
        str(args.publishers),
        "--batch-publishers",
        str(args.batch_publishers),
        "--batch-size",
        str(args.batch_size),
        "--batch-p95-ms",
        f"{args.batch_p95_ms:g}",
        "--min-batches",
        str(args.min_batches),
        "--responders",
        str(args.responders),
        "--admins",
        str(args.admins if admin else 0),
    ]
    if args.quiet:
        command.append("--only-summary")
    return [*command, *extra, *classes]


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or REPO_ROOT / "load_tests" / "results" / f"locust-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    server: ServerProcess | None = None
    if args.host is None:
        # Fresh secrets, so the run exercises the authenticated paths.
        env["PUBLISH_TOKEN"] = secrets.token_urlsafe(24)
        env["ADMIN_TOKEN"] = secrets.token_urlsafe(24)
        server_env = {
            **LOCAL_SERVER_ENV,
            "PUBLISH_TOKEN": env["PUBLISH_TOKEN"],
            "ADMIN_TOKEN": env["ADMIN_TOKEN"],
        }
        server = ServerProcess(server_env).start()
        host = server.base_url
        print(f"run_locust: started Herald at {host}", file=sys.stderr)
    else:
        host = args.host.rstrip("/")
    admin = bool(env.get("ADMIN_TOKEN"))
    if args.admins and not admin:
        print("run_locust: ADMIN_TOKEN is not set: no admin metrics poller", file=sys.stderr)
    command = locust_command(args, host, out, extra, admin)
    try:
        completed = subprocess.run(
            command, cwd=REPO_ROOT, env=env, timeout=args.run_seconds + SHUTDOWN_GRACE_SECONDS
        )
        code = completed.returncode
    except subprocess.TimeoutExpired:
        print("run_locust: Locust did not finish in time", file=sys.stderr)
        code = 3
    finally:
        if server is not None:
            server.close()
    verdict = "passed" if code == 0 else f"FAILED (exit code {code})"
    print(f"run_locust: {verdict}; CSV {out / CSV_PREFIX}_stats.csv, HTML {out / HTML_REPORT}")
    return code


if __name__ == "__main__":
    sys.exit(main())
