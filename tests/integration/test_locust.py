"""The Locust scenarios run headless against the session's Serve app, and every request passes its checks.
The users are named explicitly (10 users = the weights 3/3/1/1/1/1 exactly): one VideoUser runs a whole session
(create, prompt, propagate, scrub, delete), one ExportUser prepares a session and exports it as COCO (a
video_export job, polled, its ZIP downloaded), on the shared app's session actors."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

USERS = ["ConceptUser", "ClickUser", "JobUser", "VideoUser", "ExportUser", "LibraryUser"]
EXPECTED = {"pcs image", "upload image", "pvs first click", "pvs refine click", "job submit", "job poll",
            "video create session", "video propagate", "video frame", "video masks", "video delete session",
            "video export submit", "video export poll", "video export download", "video export (submit to download)",
            "library images", "library videos", "storage usage", "quotas", "library upload", "library delete"}


def test_locust_scenarios_pass_their_content_checks(serve_url, tmp_path):
    out = tmp_path / "locust.json"
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest/locustfile.py"), *USERS, "--headless",
           "-u", "10", "-r", "10", "-t", "12s", "--host", serve_url, "--json-file", str(out.with_suffix("")),
           "--only-summary", "--stop-timeout", "30"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env={"PATH": "/usr/bin:/bin", "SAM3_IMAGE_SIZE": "320x240", "SAM3_VIDEO_SIZE": "64x48",
                               "SAM3_VIDEO_FRAMES": "16", "HOME": str(tmp_path)})
    stats = json.loads(out.read_text())
    by_name = {s["name"]: s for s in stats}
    failures = {n: s["num_failures"] for n, s in by_name.items() if s["num_failures"]}
    assert proc.returncode == 0 and not failures, (failures, proc.stderr[-3000:])
    assert EXPECTED <= set(by_name), set(by_name)
    assert all(by_name[n]["num_requests"] > 0 for n in EXPECTED)
    assert {"video prompt (text)", "video prompt (clicks)"} & set(by_name), set(by_name)
