"""The dashboard's screenshots in docs/ (`make screenshots`): a phxqd with a plausible
day's queue (transcodes with progress, reports, a failing fetch), photographed in headless
Chromium. Not a test: `python -m tests.web_screenshots DIR`."""

from __future__ import annotations

import shutil
import stat
import sys
import tempfile
from pathlib import Path

from tests.conftest import Daemon, until
from tests.web_helpers import free_port, make_browser

PROGRESS = f"{sys.executable} -m phxqctl progress"
SCRIPTS = {
    # runs until released, its progress at $1 percent
    "transcode": f"""#!/bin/sh
echo "transcoding $2 (h264, 1080p)"
{PROGRESS} --percent "$1" --step "pass 2 of 2: encoding" --done "$(( $1 * 36 ))" --total 3600
while [ ! -e "$RELEASE" ]; do sleep 0.1; done
""",
    "nightly-report": """#!/bin/sh
echo "report for $1: 1,204 rows"
""",
    "fetch-prices": """#!/bin/sh
echo "GET https://prices.example/$1"
echo "error: upstream answered 503 Service Unavailable (after 3 tries)" >&2
exit 75
""",
}


def scene(d: Daemon, release: Path) -> list[int]:
    for day in ("2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"):
        d.submit("nightly-report", day, opts=("--queue", "reports", "--label", "nightly"))
    for feed in ("eu-power", "us-gas"):
        d.submit("fetch-prices", feed, opts=("--queue", "ingest", "--retries", "0"))
    d.ok("queue", "set", "video", "--concurrency", "2")
    running = [
        d.submit("transcode", pct, f"talk-{i}.mov", opts=("--queue", "video", "--label", "talks"))
        for i, pct in ((1, "72"), (2, "35"))
    ]
    for i in range(3, 40):
        d.submit("transcode", "0", f"talk-{i}.mov", opts=("--queue", "video", "--label", "talks"))
    until(
        lambda: all((d.job(j).get("progress") or {}).get("percent") for j in running),
        what="progress reported",
    )
    until(lambda: d.json("status")["counts"]["failed"] == 2, what="the failed fetches")
    return running


def main(where: str) -> None:
    out = Path(where).resolve()
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        raise SystemExit("chromium and chromedriver are needed: make browser")
    with tempfile.TemporaryDirectory(prefix="phxq-shots-") as tmp:
        root = Path(tmp)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        for name, text in SCRIPTS.items():
            path = bin_dir / name
            path.write_text(text)
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        release = root / "release"
        port = free_port()
        d = Daemon(root / "d", workers=4)
        d.env["PATH"] = f"{bin_dir}:{d.env.get('PATH', '')}"
        d.env["RELEASE"] = str(release)
        d.config.write_text(f'http_listen = "127.0.0.1:{port}"\n')
        d.start()
        browser = make_browser(chromium, driver_path)
        try:
            running = scene(d, release)
            url = f"http://127.0.0.1:{port}"
            browser.get(url + "/")
            browser.save_screenshot(str(out / "dashboard-overview.png"))
            browser.get(f"{url}/jobs/{running[0]}")
            browser.save_screenshot(str(out / "dashboard-job.png"))
            browser.get(url + "/jobs?queue=video")
            browser.save_screenshot(str(out / "dashboard-jobs.png"))
        finally:
            browser.quit()
            release.touch()
            d.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs")
