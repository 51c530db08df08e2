"""loadtest/campaign.py runs its model-only part where the GPU machine runs it: without Ray, FastAPI, boto3,
PyAV or requests (shared/notes/GPU_RUNS.md). A quick tiny-model run on CPU in a subprocess where importing
any of those fails; every section must produce its rows, and the Markdown table must show them."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs campaign.py as a script after making the serving stack unimportable.
BLOCKED_RUN = """
import importlib.abc, runpy, sys
BLOCKED = {"ray", "fastapi", "starlette", "uvicorn", "boto3", "botocore", "av", "requests", "kubernetes", "locust"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed on the GPU machine")
sys.meta_path.insert(0, Block())
sys.path.insert(0, "loadtest")
sys.argv = ["loadtest/campaign.py"] + sys.argv[1:]
runpy.run_path("loadtest/campaign.py", run_name="__main__")
"""


def test_model_only_campaign_runs_without_the_serving_stack(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OUT": str(out)}  # --out-dir defaults to $OUT
    proc = subprocess.run([sys.executable, "-c", BLOCKED_RUN, "--model", "tiny", "--quick", "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "campaign.json").read_text())
    sections = result["sections"]
    assert result["model"] == "tiny" and result["device"] == "cpu"
    assert sections["environment"]["result"]["ray"] is False  # the blocker worked: no served section
    assert "served" not in sections
    for name in ("checkpoint", "cold_start", "concept", "click", "video", "video_profile", "mask_encoding"):
        assert "result" in sections[name], (name, sections[name])
    curve = sections["concept"]["result"]["curve"]
    assert [r["batch_size"] for r in curve["2_prompts"]] == [1, 2]
    assert all(r["p50_ms"] > 0 and r["images_per_s"] > 0 for r in curve["1_prompts"] + curve["2_prompts"])
    assert set(curve["2_prompts"][0]["replica_timings_ms"]) >= {"vision_ms"}
    click = sections["click"]["result"]
    assert {"cold_click", "warm_click_1_objects", "warm_batch_8", "automatic_16x16"} <= set(click)
    video = sections["video"]["result"]
    assert [(r["workload"], r["objects"], r["batched"]) for r in video["single"]] == [
        ("clicks", 1, True), ("clicks", 5, True), ("clicks", 5, False), ("text", 1, True), ("text", 5, True),
        ("text", 5, False)]
    assert all(r["objects_tracked"] >= 1 and r["fps"] > 0 for r in video["single"])
    assert [r["sessions"] for r in video["concurrent"]] == [1, 2, 4]
    assert all(not r["errors"] and r["frames"] == r["sessions"] * video["frames"] for r in video["concurrent"])
    profile = sections["video_profile"]["result"]  # torch.profiler over a few frame steps (CPU: no device rows)
    assert profile["steps"] == 4 and profile["objects_tracked"] >= 1 and profile["wall_ms"] > 0
    assert profile["top_self_cpu"] and all(r["calls_per_step"] > 0 for r in profile["top_self_cpu"])
    assert profile["host"]["aten_ops"] > 0 and profile["device_busy_ms"] == 0
    assert set(profile["syncs_per_step"]) >= {"cudaStreamSynchronize", "aten::item", "aten::nonzero", "memcpy_DtoH"}
    with gzip.open(out / profile["trace"]) as f:  # the Chrome trace of the profiled steps only
        trace = json.load(f)
    assert sum(e.get("name") == "campaign::video_step" for e in trace["traceEvents"]) == profile["steps"]
    table = (out / "campaign.md").read_text()
    assert "| concept model-only, 2 prompt(s) | batch 1 p50 |" in table
    assert "| video text 5 obj, batched tracker | frames/s (1 session) |" in table
    assert "| video clicks 5 obj, per-object loop | frames/s (1 session) |" in table
    assert "| video profile, text 5 obj (" in table and "| Chrome trace | video_profile_trace.json.gz |" in table
    assert "not measured" not in table  # no section failed or was skipped
    assert (out / "campaign_concept.png").stat().st_size > 0
    assert not Path(sections["checkpoint"]["result"]).exists()  # the built checkpoint was removed
