"""A corpus of bad input, one case per way a user gets it wrong, run through the real CLI.

Every case must end before anything is simulated with exit code 2 and ONE line on stderr that
names the field or flag, the value and what is allowed; no traceback; and the working folder
(scenario files, an earlier run, a foreign folder) byte-for-byte as it was: nothing created,
nothing overwritten. The classes follow issue 14: non-finite and absurd numbers (in scenario
files, ``--set`` and flags), work above the limits, degenerate scenarios, files that are not
text, damaged run directories, output directories that would be overwritten or mixed, and
messages that must use the user's own words. The tests after the corpus check the other side:
what ``--overwrite``, ``--force``, same-kind reruns and ``Result.save`` do allow.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helper import cli

AGENTSIM = str(Path(sys.executable).with_name("agentsim"))

TINY = """\
name = "tiny"
duration_s = 20
seed = 3
sample_s = 30

[pools.h100]
gpu = "H100-SXM"
model = "Llama-3-8B"
replicas = 2

[streams.chat]
kind = "poisson"
rate = 5
input_tokens = { kind = "lognormal", median = 512, sigma = 0.8, max = 4096 }
output_tokens = { kind = "lognormal", median = 128, sigma = 0.6, max = 1024 }
"""

# a model whose 12 attention heads split over tp=4 but whose 6 KV heads neither split nor replicate
ODD_MODEL = """\
[models.odd-heads]
layers = 16
d_model = 1536
n_heads = 12
n_kv_heads = 6
head_dim = 128
d_ff = 6144
vocab = 32000
max_context = 8192
"""

AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,100,10\n"
EST = ["estimate", "--model", "Llama-3-8B", "--gpu", "H100-SXM", "--input-tokens", "100", "--output-tokens", "10"]




def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder below ``root`` with a hash of its bytes."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            snap[str(Path(dirpath, d).relative_to(root)) + "/"] = ""
        for f in filenames:
            p = Path(dirpath, f)
            snap[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return snap


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The user's folder: scenario, catalog and trace files good and bad, an earlier single run,
    an earlier replicated run, a foreign folder, and damaged copies of the runs."""
    import shutil
    w = tmp_path_factory.mktemp("work")
    (w / "tiny.toml").write_text(TINY)
    (w / "latin.toml").write_bytes('name = "café"\n'.encode("latin-1") + TINY.encode())
    (w / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (w / "odd.toml").write_text(ODD_MODEL)
    (w / "latin-catalog.toml").write_bytes("# Modèle\n".encode("latin-1") + ODD_MODEL.encode())
    (w / "binary-catalog.toml").write_bytes(b"\x00\xff\xfe" * 100)
    (w / "latin-trace.csv").write_bytes(AZURE.replace("TIMESTAMP", "TIMESTAMP\xe9").encode("latin-1"))
    (w / "binary-trace.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (w / "azure.csv").write_text(AZURE)
    (w / "latin-replay.csv").write_bytes("arrival_s,input_tokens,output_tokens\n0,10,5 # é\n".encode("latin-1"))
    (w / "latin-points.csv").write_bytes("gpu,model\nH100 é,x\n".encode("latin-1"))
    (w / "nosuch").mkdir()                                   # a folder that is not a preset
    (w / "nosuch" / "x.txt").write_text("x")
    (w / "foreign").mkdir()                                  # someone's folder: never to be overwritten
    (w / "foreign" / "thesis.tex").write_text("precious")
    for args in (["--out", str(w / "single")], ["--out", str(w / "reps"), "-r", "2"]):
        code, _, err = cli("run", str(w / "tiny.toml"), "--no-progress", "--no-figures", "--format", "json", *args)
        assert code == 0, err
    damaged = {"trunc-requests": ("requests.parquet", None), "empty-pools": ("pools.parquet", b""),
               "bad-summary": ("summary.json", b'{"requests": '), "bad-manifest": ("manifest.json", b"[1, 2"),
               "binary-summary": ("summary.json", b"\xff\xfe\x00\x01")}
    for name, (fname, data) in damaged.items():
        shutil.copytree(w / "single", w / name)
        f = w / name / fname
        f.write_bytes(f.read_bytes()[:200] if data is None else data)
    shutil.copytree(w / "reps", w / "trunc-rep")
    ts = w / "trunc-rep" / "rep-001" / "timeseries.parquet"
    ts.write_bytes(ts.read_bytes()[:-30])
    return w


def C(*args, needles=(), absent=(), set_first=False):
    """A case: argv (``{w}`` is the work folder), text the line must hold and must not hold."""
    return (args, needles, absent, set_first)


T = "{w}/tiny.toml"
RUN = ("run", T, "--no-progress")

CASES = {
    # -- non-finite and absurd numbers: scenario fields via --set ---------------------------------------
    "rate-inf": C(*RUN, "--set", "streams.chat.rate=inf", needles=("streams.chat.rate", "inf", "finite")),
    "rate-nan": C(*RUN, "--set", "streams.chat.rate=nan", needles=("streams.chat.rate", "nan", "finite")),
    "rate-minus-inf": C(*RUN, "--set", "streams.chat.rate=-inf", needles=("streams.chat.rate", "-inf")),
    "rate-1e12": C(*RUN, "--set", "streams.chat.rate=1e12", needles=("streams.chat.rate", "1000000000000",
                                                                        "less than or equal to 1000000")),
    "duration-inf": C(*RUN, "--set", "duration_s=inf", needles=("duration_s", "inf", "finite")),
    "duration-nan": C(*RUN, "--set", "duration_s=nan", needles=("duration_s", "nan")),
    "duration-1e12": C(*RUN, "--set", "duration_s=1e12", needles=("duration_s", "less than or equal")),
    "replicas-1e10": C(*RUN, "--set", "pools.h100.replicas=10000000000",
                       needles=("pools.h100.replicas", "10000000000", "1000000")),
    "sample-inf": C(*RUN, "--set", "sample_s=inf", needles=("sample_s", "inf")),
    "slo-nan": C(*RUN, "--set", "slo_ttft_s=nan", needles=("slo_ttft_s", "nan")),
    "ttl-inf": C(*RUN, "--set", "engine.prefix_ttl_s=inf", needles=("engine.prefix_ttl_s", "inf")),
    "host-kv-1e9": C(*RUN, "--set", "engine.host_kv_gb=1e9", needles=("engine.host_kv_gb", "1000000")),
    "mem-util-nan": C(*RUN, "--set", "engine.mem_util=nan", needles=("engine.mem_util", "nan")),
    "pue-inf": C(*RUN, "--set", "sites.default.pue=inf", needles=("sites.default.pue", "inf")),
    "count-1e10": C(*RUN, "--set", "streams.chat.count=10000000000", needles=("streams.chat.count", "10000000000")),
    "mtbf-inf": C(*RUN, "--set", "pools.h100.faults.mtbf_h=inf", needles=("pools.h100.faults.mtbf_h", "inf")),
    # -- expert and data parallelism (issue 16) --------------------------------------------------------
    "ep-dense-model": C(*RUN, "--set", "pools.h100.ep=2", needles=("pools.h100", "ep=2", "MoE", "allowed ep: 1")),
    "ep-not-dividing-experts": C(*RUN, "--set", "pools.h100.model=DeepSeek-V3", "--set", "pools.h100.precision=fp8",
                                 "--set", "pools.h100.dp_attention=24", "--set", "pools.h100.ep=24",
                                 needles=("pools.h100", "ep=24", "256 experts", "allowed ep")),
    "ep-not-dividing-gpus": C(*RUN, "--set", "pools.h100.model=DeepSeek-V3", "--set", "pools.h100.precision=fp8",
                              "--set", "pools.h100.tp=8", "--set", "pools.h100.pp=2", "--set", "pools.h100.ep=16",
                              needles=("pools.h100", "ep=16", "tp x dp_attention", "allowed ep")),
    "redundant-experts-without-ep": C(*RUN, "--set", "pools.h100.model=DeepSeek-V3", "--set", "pools.h100.precision=fp8",
                                      "--set", "pools.h100.tp=8", "--set", "pools.h100.pp=2",
                                      "--set", "pools.h100.redundant_experts=32",
                                      needles=("pools.h100", "redundant_experts=32", "ep > 1")),
    "dp-attention-bool": C(*RUN, "--set", "pools.h100.dp_attention=true",
                           needles=("pools.h100.dp_attention", "True", "degree")),
    "dp-attention-zero": C(*RUN, "--set", "pools.h100.dp_attention=0",
                           needles=("pools.h100.dp_attention", "0", "greater than or equal to 1")),
    "median-inf": C(*RUN, "--set", "streams.chat.input_tokens.median=inf",
                    needles=("streams.chat.input_tokens.median", "inf")),
    "dist-max-inf": C(*RUN, "--set", "streams.chat.input_tokens.max=inf",
                      needles=("streams.chat.input_tokens.max", "inf")),
    "sigma-1e3": C(*RUN, "--set", "streams.chat.input_tokens.sigma=1000",
                   needles=("streams.chat.input_tokens.sigma", "1000", "less than or equal to 20")),
    "seed-1e30": C(*RUN, "--set", "seed=1e30", needles=("seed",)),
    "population-size-1e9": C(*RUN, "--set", "populations.p.profile='chat_user'",
                             "--set", "populations.p.size=1000000000",
                             needles=("populations.p.size", "1000000000", "100000000")),
    "profile-param-inf": C(*RUN, "--set", "populations.p.profile='chat_user'", "--set", "populations.p.size=5",
                           "--set", "populations.p.params.sessions_per_user_day=inf",
                           needles=("sessions_per_user_day", "inf")),
    "outage-end-inf": C(*RUN, "--set", "outages=[{target='pool:h100',start_s=1,end_s=inf}]",
                        needles=("outages.0.end_s", "inf")),
    # -- non-finite and absurd numbers: flags ------------------------------------------------------------
    "estimate-rate-inf": C(*EST, "--rate", "inf", needles=("--rate", "'inf'", "finite")),
    "estimate-rate-nan": C(*EST, "--rate", "nan", needles=("--rate", "'nan'", "finite")),
    "estimate-rate-1e12": C(*EST, "--rate", "1e12", needles=("--rate", "1e12", "1e+06")),
    "estimate-rate-negative": C(*EST, "--rate", "-1", needles=("--rate", "-1")),
    "estimate-requests-2e9": C(*EST, "--rate", "1", "--requests", "2000000000", needles=("--requests", "2000000000")),
    "estimate-concurrency-1e8": C(*EST, "--concurrency", "100000000", needles=("--concurrency", "100000000")),
    "estimate-replicas-1e10": C(*EST, "--rate", "1", "--replicas", "10000000000", needles=("--replicas",)),
    "estimate-max-batch-0": C(*EST, "--rate", "1", "--max-batch", "0", needles=("--max-batch", "0")),
    # -- engine presets and estimate modes (issue 13) -------------------------------------------------
    "preset-unknown": C(*RUN, "--set", "engine.preset='tgi'", needles=("engine.preset", "'tgi'", "vllm", "trtllm")),
    "estimate-engine-unknown": C(*EST, "--rate", "1", "--engine", "tgi", needles=("--engine", "'tgi'", "sglang"),
                                 absent=("engine.preset",)),
    "estimate-server-no-tpot": C(*EST, "--mode", "server", "--ttft-p99", "2", needles=("--mode server", "--tpot-p99")),
    "estimate-server-ttft-0": C(*EST, "--mode", "server", "--ttft-p99", "0", "--tpot-p99", "0.1",
                                needles=("--ttft-p99", "'0'")),
    "estimate-server-tpot-inf": C(*EST, "--mode", "server", "--ttft-p99", "2", "--tpot-p99", "inf",
                                  needles=("--tpot-p99", "'inf'", "finite")),
    "estimate-bounds-without-server": C(*EST, "--rate", "1", "--ttft-p99", "2", needles=("--ttft-p99", "--mode server")),
    "estimate-mode-unknown": C(*EST, "--mode", "batch", needles=("--mode", "'batch'", "offline", "server")),
    "estimate-mode-and-max-load": C(*EST, "--mode", "server", "--max-load", "--ttft-p99", "2", "--tpot-p99", "0.1",
                                    needles=("exactly one of", "--max-load")),
    "replay-duration-inf": C("replay", "{w}/azure.csv", "--trace-format", "azure", "--no-progress", "--duration", "inf",
                             needles=("--duration", "'inf'", "finite")),
    "replay-duration-nan": C("replay", "{w}/azure.csv", "--trace-format", "azure", "--duration", "nan",
                             needles=("--duration", "'nan'")),
    "capacity-step-inf": C("capacity", T, "--slo", "ttft_p99_s<=2", "--vary", "pools.h100.replicas", "--step", "inf",
                           needles=("--step", "'inf'")),
    "capacity-low-nan": C("capacity", T, "--slo", "ttft_p99_s<=2", "--vary", "pools.h100.replicas", "--low", "nan",
                          needles=("--low", "'nan'")),
    "sweep-connect-timeout-inf": C("sweep", T, "--grid", "pools.h100.replicas=1,2", "--connect-timeout", "inf",
                                   needles=("--connect-timeout", "'inf'")),
    "experiment-scale-inf": C("experiment", "energy", "--scale", "inf", needles=("--scale", "'inf'")),
    "experiment-scale-1e9": C("experiment", "energy", "--scale", "1e9", needles=("--scale", "1e9")),
    # -- work above the limits (refused with the estimate; --force lifts) --------------------------------
    "work-rate-for-a-day": C(*RUN, "--set", "streams.chat.rate=100000", "--set", "duration_s=86400",
                             needles=("too big", "requests", "GB", "--force")),
    "work-million-replicas": C(*RUN, "--set", "pools.h100.replicas=1000000", needles=("too big", "--force")),
    "work-replications": C(*RUN, "--set", "streams.chat.rate=1000", "--set", "duration_s=86400", "-r", "100",
                           needles=("too big", "--force")),
    "work-preset-users": C("run", "default", "--no-progress", "--set", "populations.coders.size=100000000",
                           needles=("too big", "--force")),
    "work-estimate-requests": C(*EST, "--rate", "1000", "--requests", "100000000",
                                needles=("this estimate is too big", "--requests", "--force"),
                                absent=("streams", "load", "pools")),
    "work-sweep-base": C("sweep", T, "--grid", "pools.h100.replicas=1,2", "--set", "streams.chat.rate=100000",
                         "--set", "duration_s=86400", needles=("too big", "--force")),
    # -- degenerate scenarios ----------------------------------------------------------------------------
    "no-streams-no-populations": C(*RUN, "--set", "streams={}", needles=("nothing to simulate", "streams",
                                                                          "populations")),
    "warmup-equals-duration": C(*RUN, "--set", "warmup_s=20", needles=("warmup_s", "20", "below duration_s")),
    "warmup-beyond-duration": C(*RUN, "--set", "warmup_s=30", needles=("warmup_s", "30", "below duration_s")),
    "tp-not-dividing-heads": C(*RUN, "--set", "pools.h100.tp=3", needles=("tp=3", "32 attention heads",
                                                                         "allowed tp: 1, 2, 4, 8")),
    "tp-against-kv-heads": C(*EST, "--rate", "1", "--catalog", "{w}/odd.toml", "--model", "odd-heads", "--tp", "4",
                             needles=("tp=4", "6 KV heads", "allowed tp")),
    "estimate-tp-3": C(*EST, "--rate", "1", "--tp", "3", needles=("tp=3", "attention heads"),
                       absent=("pools.main", "main:")),
    "prompt-beyond-kv": C(*RUN, "--set", "streams.chat.input_tokens=5000000",
                          needles=("streams.chat.input_tokens", "5000001", "KV")),
    "estimate-prompt-beyond-kv": C(*EST, "--concurrency", "1", "--input-tokens", "3000000",
                                   needles=("--input-tokens", "KV"), absent=("streams.load",)),
    "sweep-nothing-to-simulate": C("sweep", T, "--grid", "pools.h100.replicas=1,2", "--set", "streams={}",
                                   needles=("--set 'streams={}'", "nothing to simulate")),
    "capacity-prompt-beyond-kv": C("capacity", T, "--slo", "ttft_p99_s<=2", "--vary", "pools.h100.replicas",
                                   "--set", "streams.chat.input_tokens=5000000", needles=("KV", "5000001")),
    # -- files that are not text; names that are not presets ---------------------------------------------
    "latin-1-scenario": C("run", "{w}/latin.toml", "--no-progress", needles=("latin.toml", "not UTF-8", "0xe9")),
    "binary-scenario": C("run", "{w}/binary.toml", "--no-progress", needles=("binary.toml", "not UTF-8")),
    "latin-1-catalog": C(*EST, "--rate", "1", "--catalog", "{w}/latin-catalog.toml",
                         needles=("catalog file", "latin-catalog.toml", "not UTF-8")),
    "binary-catalog": C(*EST, "--rate", "1", "--catalog", "{w}/binary-catalog.toml",
                        needles=("catalog file", "binary-catalog.toml", "UTF-8")),
    "scenario-catalog-latin-1": C(*RUN, "--set", "catalog=['latin-catalog.toml']",
                                  needles=("latin-catalog.toml", "not UTF-8")),
    "latin-1-trace": C("replay", "{w}/latin-trace.csv", "--trace-format", "azure", "--no-progress",
                       needles=("trace file", "latin-trace.csv", "not UTF-8")),
    "binary-trace": C("replay", "{w}/binary-trace.jsonl", "--trace-format", "mooncake", "--no-progress",
                      needles=("trace file", "binary-trace.jsonl", "UTF-8")),
    "latin-1-replay-stream": C(*RUN, "--set", "streams={}", "--set", "streams.r.kind='replay'",
                               "--set", "streams.r.file='latin-replay.csv'", needles=("replay file", "not UTF-8")),
    "latin-1-calibration-data": C("calibrate", "--data", "{w}/latin-points.csv",
                                  needles=("latin-points.csv", "utf-8", "0xe9")),
    "folder-is-not-a-preset": C("run", "nosuch", "--no-progress", needles=("unknown preset 'nosuch'", "default")),
    # -- damaged run directories -------------------------------------------------------------------------
    "plot-truncated-parquet": C("plot", "{w}/trunc-requests", needles=("requests.parquet", "not a readable Parquet")),
    "report-truncated-parquet": C("report", "{w}/trunc-requests", needles=("requests.parquet", "Parquet")),
    "report-empty-parquet": C("report", "{w}/empty-pools", needles=("pools.parquet", "Parquet")),
    "report-broken-summary": C("report", "{w}/bad-summary", needles=("summary.json", "not valid JSON")),
    "plot-broken-manifest": C("plot", "{w}/bad-manifest", needles=("manifest.json", "not valid JSON")),
    "report-binary-summary": C("report", "{w}/binary-summary", needles=("summary.json", "UTF-8")),
    "plot-truncated-replication": C("plot", "{w}/trunc-rep", needles=("rep-001", "timeseries.parquet", "Parquet")),
    # -- output directories: never overwrite, never mix, never leave one behind -------------------------
    "out-foreign-folder": C(*RUN, "--out", "{w}/foreign", needles=("--out", "foreign", "not empty", "--overwrite")),
    "out-replications-into-single-run": C(*RUN, "-r", "2", "--out", "{w}/single",
                                          needles=("--out", "single", "previous run", "--overwrite")),
    "out-single-into-replications": C(*RUN, "--out", "{w}/reps",
                                      needles=("--out", "previous replications", "--overwrite")),
    "out-sliced-into-single-run": C(*RUN, "--slices", "2", "--workers", "0", "--out", "{w}/single",
                                    needles=("--out", "not a sliced output")),
    "out-replay-into-foreign": C("replay", "{w}/azure.csv", "--trace-format", "azure", "--no-progress",
                                 "--out", "{w}/foreign", needles=("--out", "not empty")),
    "out-sweep-into-run": C("sweep", T, "--grid", "pools.h100.replicas=1,2", "--no-progress", "--out", "{w}/single",
                            needles=("--out", "not a sweep output")),
    "out-capacity-into-foreign": C("capacity", T, "--slo", "ttft_p99_s<=2", "--vary", "pools.h100.replicas",
                                   "--no-progress", "--out", "{w}/foreign", needles=("--out", "not empty")),
    "out-experiment-into-foreign": C("experiment", "energy", "--out", "{w}/foreign", needles=("--out", "not empty")),
    "out-through-a-file": C(*RUN, "--out", "{w}/tiny.toml/sub", needles=("output directory", "not writable")),
    "rejected-run-creates-no-out": C(*RUN, "--out", "{w}/fresh/deeper", "--set", "streams.chat.rate=inf",
                                     needles=("streams.chat.rate", "inf")),
    "rejected-big-run-creates-no-out": C(*RUN, "--out", "{w}/fresh", "--set", "pools.h100.replicas=1000000",
                                         needles=("too big",)),
    # -- the user's own words ----------------------------------------------------------------------------
    "set-unknown-pool": C(*RUN, "--set", "pools.h999.replicas=2", needles=("--set 'pools.h999.replicas=2'",
                                                                           "no pool 'h999'", "h100"),
                          absent=("Field required", "gpu:"), set_first=True),
    "set-negative-rate": C(*RUN, "--set", "streams.chat.rate=-3", needles=("streams.chat.rate", "(got -3)"),
                           set_first=True),
    "set-unknown-gpu": C(*RUN, "--set", "pools.h100.gpu=H900", needles=("'H900'", "H100-SXM"), set_first=True),
    "set-unknown-field": C(*RUN, "--set", "streams.chat.rat=3", needles=("did you mean 'rate'",), set_first=True),
    "estimate-unknown-gpu": C(*EST, "--rate", "1", "--gpu", "H900", needles=("'H900'",), absent=("pools", "main")),
    "estimate-unknown-model": C(*EST, "--rate", "1", "--model", "Llama-9", needles=("'Llama-9'",),
                                absent=("pools", "main")),
    "replay-set-unknown-pool": C("replay", "{w}/azure.csv", "--trace-format", "azure", "--no-progress",
                                 "--set", "pools.nope.replicas=2", needles=("no pool 'nope'", "replay"),
                                 set_first=True),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(work, monkeypatch, case):
    args, needles, absent, set_first = case
    monkeypatch.chdir(work)
    from agentsim.run.sim import Simulation

    def must_not_run(self, progress=None):
        raise AssertionError("simulated before rejecting the input")
    monkeypatch.setattr(Simulation, "run", must_not_run)
    before = snapshot(work)
    code, out, err = cli(*[a.replace("{w}", str(work)) for a in args])
    assert code == 2, f"exit {code}; stderr {err!r}"
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: ")
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    for n in absent:
        assert n not in line, f"{n!r} in {line!r}"
    if set_first:       # a --set mistake is blamed on the --set, not on the scenario file
        assert line.startswith("error: --set "), line
    assert snapshot(work) == before
    assert not list(work.parent.glob(".*agentsim*")), "a staging folder was left beside the work folder"


def test_the_corpus_covers_every_class():
    assert len(CASES) >= 60


@pytest.mark.parametrize("args, needle", [
    (["run", "{w}/tiny.toml", "--no-progress", "--set", "streams.chat.rate=inf"], "streams.chat.rate"),
    (EST + ["--rate", "inf"], "--rate"),
    (["run", "{w}/latin.toml"], "not UTF-8"),
    (["report", "{w}/trunc-requests"], "requests.parquet"),
])
def test_no_traceback_from_the_real_entry_point(work, args, needle):
    before = snapshot(work)
    proc = subprocess.run([AGENTSIM, *[a.replace("{w}", str(work)) for a in args]], capture_output=True, text=True,
                          timeout=120, cwd=work)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert snapshot(work) == before


# -- what is allowed -------------------------------------------------------------------------------------------
def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def test_overwrite_replaces_a_single_run_with_replications_unmixed(tmp_path):
    scn = tmp_path / "tiny.toml"
    scn.write_text(TINY.replace("duration_s = 20", "duration_s = 5"))
    out = tmp_path / "out"
    assert cli("run", str(scn), "--no-progress", "--no-figures", "--out", str(out))[0] == 0
    assert (out / "requests.parquet").exists()
    code, _, err = cli("run", str(scn), "--no-progress", "--no-figures", "-r", "2", "--out", str(out), "--overwrite")
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["rep-000", "rep-001", "summary.json"]        # no old file beside them
    assert sorted(os.listdir(tmp_path)) == ["out", "tiny.toml"]                      # no staging left


def test_overwrite_replaces_a_foreign_folder_whole(tmp_path):
    scn = tmp_path / "tiny.toml"
    scn.write_text(TINY.replace("duration_s = 20", "duration_s = 5"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("old")
    code, _, err = cli("run", str(scn), "--no-progress", "--no-figures", "--out", str(out), "--overwrite")
    assert code == 0, err
    assert not (out / "notes.txt").exists() and (out / "manifest.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["out", "tiny.toml"]


def test_rerun_into_a_run_of_the_same_kind_replaces_it_without_overwrite(tmp_path):
    scn = tmp_path / "tiny.toml"
    scn.write_text(TINY.replace("duration_s = 20", "duration_s = 5"))
    out = tmp_path / "out"
    assert cli("run", str(scn), "--no-progress", "--no-figures", "--out", str(out))[0] == 0
    (out / "report.md").write_text("a report of the old run")
    code, _, err = cli("run", str(scn), "--no-progress", "--no-figures", "--out", str(out), "--seed", "9")
    assert code == 0, err
    assert not (out / "report.md").exists()          # nothing describing the old run survives
    import json
    assert json.loads((out / "manifest.json").read_text())["seed"] == 9
    assert sorted(os.listdir(tmp_path)) == ["out", "tiny.toml"]


def test_an_interrupted_staged_run_leaves_the_old_one_and_keeps_the_new_part(tmp_path, monkeypatch):
    scn = tmp_path / "tiny.toml"
    scn.write_text(TINY.replace("duration_s = 20", "duration_s = 5"))
    out = tmp_path / "out"
    assert cli("run", str(scn), "--no-progress", "--no-figures", "--out", str(out))[0] == 0
    before = snapshot(out)
    from agentsim.run.sim import Simulation
    real, calls = Simulation.run, [0]

    def second_interrupted(self, progress=None):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(self, progress)
    monkeypatch.setattr(Simulation, "run", second_interrupted)
    code, _, err = cli("run", str(scn), "--no-progress", "--no-figures", "-r", "3", "--out", str(out), "--overwrite")
    assert code == 130 and "1 finished replication(s) kept in" in err and "out.partial" in err, err
    assert snapshot(out) == before
    assert os.listdir(tmp_path / "out.partial") == ["rep-000"]


def test_force_lifts_the_work_limit(tmp_path, monkeypatch):
    from agentsim.run import checks
    scn = tmp_path / "tiny.toml"
    scn.write_text(TINY.replace("duration_s = 20", "duration_s = 5"))
    monkeypatch.setattr(checks, "MAX_MEMORY_BYTES", 1e3)
    code, _, err = cli("run", str(scn), "--no-progress")
    assert code == 2 and "too big" in err and "--force" in err
    code, out, err = cli("run", str(scn), "--no-progress", "--force", "--format", "json")
    assert code == 0, err


def test_no_preset_and_no_big_fleet_is_refused():
    """Shipped presets, and a sliced 220k-GPU fleet with a million users, pass the work check."""
    from agentsim.run.api import load_scenario, preset_names
    from agentsim.run.scenario import parse
    from agentsim.run.checks import estimate_work
    for name in preset_names():
        assert not estimate_work(load_scenario(name)).too_big, name
    fleet = {"duration_s": 86400, "warmup_s": 1800,
             "pools": {"h100": {"gpu": "H100-SXM", "model": "DeepSeek-V3", "precision": "fp8", "tp": 8, "pp": 2,
                                "replicas": 9375},
                       "h200": {"gpu": "H200", "model": "DeepSeek-V3", "precision": "fp8", "tp": 8, "replicas": 6250},
                       "gb200": {"gpu": "GB200", "model": "DeepSeek-V3", "precision": "fp4", "tp": 4,
                                 "replicas": 5000}},
             "populations": {"coders": {"profile": "interactive_coding_agent", "size": 600_000, "tenants": 6000},
                             "chat": {"profile": "chat_user", "size": 400_000, "tenants": 4000}},
             "slice": {"count": 625}}
    sc = parse(fleet)
    assert sum(p.replicas * p.tp * p.pp for p in sc.pools.values()) == 220_000
    assert not estimate_work(sc).too_big
    assert estimate_work(parse({**fleet, "slice": {"count": 1}})).too_big     # unsliced: refused (--force)


def test_a_preset_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    from agentsim.run.api import load_scenario, preset_path, resolve
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "x.toml").write_text("name = 'not the preset'\n")
    monkeypatch.chdir(tmp_path)
    assert resolve("default") == preset_path("default")
    assert load_scenario("default").name == "default"
    (tmp_path / "mine.toml").write_text(TINY)
    assert resolve("mine.toml") == Path("mine.toml")


def test_tail_beyond_kv_is_a_warning_with_the_share(tmp_path, monkeypatch):
    from agentsim.run.sim import Simulation
    scn = tmp_path / "tiny.toml"
    scn.write_text(TINY.replace("duration_s = 20", "duration_s = 2"))
    code, out, err = cli("run", str(scn), "--no-progress", "--format", "json",
                         "--set", "streams.chat.input_tokens.max=5000000", "--set", "streams.chat.input_tokens.sigma=4")
    assert code == 0, err
    line = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(line) == 1 and "streams.chat" in line[0] and "request_too_large" in line[0] and "%" in line[0]
    share = float(line[0].split("about ")[1].split("%")[0])
    assert 1 < share < 10


def test_result_save_refuses_a_non_empty_folder_unless_overwrite(work, tmp_path):
    from agentsim.util.errors import InputError
    from agentsim.results.result import Result
    res = Result.load(work / "single")
    target = tmp_path / "t"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        res.save(target)
    assert os.listdir(target) == ["keep.txt"]
    res.save(target, overwrite=True)
    assert (target / "requests.parquet").exists()
    empty = tmp_path / "e"
    empty.mkdir()
    res.save(empty)                 # an empty folder is fine
    res.save(tmp_path / "new")      # and a new one
    assert len(Result.load(tmp_path / "new").requests) == len(res.requests)


def test_plot_takes_a_replicated_run_like_report(work, tmp_path):
    import shutil
    d = tmp_path / "reps"
    shutil.copytree(work / "reps", d)
    code, out, err = cli("plot", str(d))
    assert code == 0, err
    assert {Path(p).parent.parent.name for p in out.split()} == {"rep-000", "rep-001"}


def test_every_command_that_runs_has_the_same_progress_and_out_flags():
    import click

    from agentsim.cli.common import cli as root
    ctx = click.Context(root)
    for name in root.list_commands(ctx):      # commands load on first use: load them all
        root.get_command(ctx, name)
    for name in ("run", "replay", "sweep", "capacity", "validate"):
        opts = {o for p in root.commands[name].params for o in p.opts + p.secondary_opts}
        assert {"--progress", "--no-progress", "--format"} <= opts, name
    for name in ("run", "replay", "sweep", "capacity"):
        opts = {o for p in root.commands[name].params for o in p.opts}
        assert {"--out", "--overwrite"} <= opts, name
    for name in ("run", "replay", "estimate", "sweep", "capacity"):
        assert "--force" in {o for p in root.commands[name].params for o in p.opts}, name
