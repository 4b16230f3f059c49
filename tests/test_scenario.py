"""Scenario files: loading, ``--set`` overrides, validation and the one-line errors of the CLI.

Every bad input must surface as :class:`agentsim.util.errors.InputError` (library) or as exit code 2
with one line on stderr naming the field, the value given and what is allowed (CLI).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import agentsim
from agentsim.run import scenario as scn
from agentsim.run.api import load_scenario, preset_names, preset_path
from agentsim.run.build import build
from cli_helper import cli
from agentsim.util.errors import InputError

SMALL = """\
name = "small"
duration_s = 60
warmup_s = 10
seed = 3
sample_s = 10

[pools.a]
gpu = "H100-SXM"
model = "Llama-3-8B"
replicas = 2

[pools.b]
gpu = "H200"
model = "Llama-3-8B"
replicas = 1

[streams.chat]
kind = "poisson"
rate = 5
input_tokens = { kind = "lognormal", median = 512, sigma = 0.8, max = 4096 }
output_tokens = 64
"""

AGENTSIM = str(Path(sys.executable).with_name("agentsim"))

WITH_OUTAGE = SMALL + """
[[outages]]
target = "pool:a"
start_s = 10
end_s = 20
"""


@pytest.fixture
def small(tmp_path) -> Path:
    p = tmp_path / "small.toml"
    p.write_text(SMALL)
    return p


def load_and_build(path, overrides=()):
    """What ``agentsim run`` does before simulating: load, validate, wire."""
    sc = scn.load(path, list(overrides))
    return build(sc)


def run_cli(args, capsys) -> tuple[int, str, str]:
    """``agentsim ARGS`` in-process (tests/cli_helper.py): (exit code, stdout, stderr)."""
    capsys.readouterr()
    return cli(*args)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} missing from {lines[0]!r}"


# -- the preset -----------------------------------------------------------------------------------------
def test_preset_loads_validates_and_wires():
    assert "engine_mixed" in preset_names()
    sc = load_scenario("engine_mixed")
    assert sc == scn.load(preset_path("engine_mixed"))
    assert sc.name == "engine_mixed"
    assert set(sc.pools) == {"h100", "h200", "b200"}
    assert {p.gpu for p in sc.pools.values()} == {"H100-SXM", "H200", "B200"}
    assert {p.model for p in sc.pools.values()} == {"Llama-3-70B"}
    assert sc.router.policy == "speed_aware"
    assert sc.streams["chat"].kind == "poisson" and sc.streams["chat"].rate == 25.0
    assert (sc.duration_s, sc.warmup_s) == (600, 60)
    sim = build(sc)
    assert len(sim.cluster.replicas) == sum(p.replicas for p in sc.pools.values()) == 8


def test_preset_cli_show_and_list_agree_with_the_file(capsys):
    code, out, _ = run_cli(["scenario", "show", "engine_mixed"], capsys)
    assert code == 0
    assert scn.parse(tomllib.loads(out)) == load_scenario("engine_mixed")
    code, out, _ = run_cli(["scenario", "list"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert any(line.startswith("engine_mixed: ") and "H100" in line for line in lines)
    assert any(line.startswith("default: ") for line in lines)


# -- overrides ------------------------------------------------------------------------------------------
def test_apply_overrides_parses_values_and_never_mutates_its_input():
    data = tomllib.loads(SMALL)
    before = json.dumps(data, sort_keys=True)
    out = scn.apply_overrides(data, [
        "pools.a.replicas=8",                      # int
        "streams.chat.rate=2.5",                   # float
        "pools.b.gpu=B200",                        # bare word -> string
        'pools.b.precision="fp8"',                 # quoted string
        "pools.c.gpu=H100-SXM",                    # a new table is created on the way
        "engine.host_kv_gb=1e2",                   # exponent float
        "streams.chat.output_tokens={kind='uniform', low=10, high=20}",   # inline table
        "catalog=[]",                              # array
        "description=two words",                   # not a literal: kept as text
    ])
    assert json.dumps(data, sort_keys=True) == before
    assert out["pools"]["a"]["replicas"] == 8 and isinstance(out["pools"]["a"]["replicas"], int)
    assert out["streams"]["chat"]["rate"] == 2.5
    assert out["pools"]["b"]["gpu"] == "B200"
    assert out["pools"]["b"]["precision"] == "fp8"
    assert out["pools"]["c"] == {"gpu": "H100-SXM"}
    assert out["engine"]["host_kv_gb"] == 100.0
    assert out["streams"]["chat"]["output_tokens"] == {"kind": "uniform", "low": 10, "high": 20}
    assert out["catalog"] == []
    assert out["description"] == "two words"


def test_load_applies_overrides_before_validating(small):
    sc = scn.load(small, ["pools.a.replicas=8", "streams.chat.rate=40", "router.policy=round_robin",
                          "pools.b.engine.max_batch=64", "duration_s=30"])
    assert sc.pools["a"].replicas == 8
    assert sc.streams["chat"].rate == 40
    assert sc.router.policy == "round_robin"
    assert sc.pool_engine("b").max_batch == 64 and sc.pool_engine("a").max_batch is None
    assert sc.duration_s == 30
    base = scn.load(small)
    assert base.pools["a"].replicas == 2 and base.streams["chat"].rate == 5


def test_override_into_a_list_of_tables(tmp_path):
    p = tmp_path / "o.toml"
    p.write_text(WITH_OUTAGE)
    assert scn.load(p, ["outages.0.end_s=30"]).outages[0].end_s == 30
    with pytest.raises(InputError, match=r"outages\.1\.end_s=30.*'1' is not an index"):
        scn.load(p, ["outages.1.end_s=30"])
    with pytest.raises(InputError, match=r"'x' is not an index"):
        scn.load(p, ["outages.x.end_s=30"])


@pytest.mark.parametrize("item, match", [
    ("pools.a.replicas", r"expected PATH=VALUE"),
    ("=5", r"expected PATH=VALUE"),
    ("pools.a.gpu.x=1", r"'gpu' is a value, not a table"),
])
def test_malformed_overrides(small, item, match):
    with pytest.raises(InputError, match=match):
        scn.load(small, [item])


# -- unknown fields: the nearest name is suggested -------------------------------------------------------
@pytest.mark.parametrize("item, path, suggestion", [
    ("duratoin_s=5", "duratoin_s", "duration_s"),                          # top level
    ("warmup=5", "warmup", "warmup_s"),
    ("pools.a.replcas=3", "pools.a.replcas", "replicas"),                  # in a pool
    ("pools.a.faults.mtbf=2", "pools.a.faults.mtbf", "mtbf_h"),            # in a pool's faults
    ("streams.chat.rat=3", "streams.chat.rat", "rate"),                    # in a stream
    ("pools.a.engine.max_bach=3", "pools.a.engine.max_bach", "max_batch"),  # in pools.X.engine
    ("engine.token_buget=4096", "engine.token_buget", "token_budget"),     # in [engine]
    ("router.polcy=round_robin", "router.polcy", "policy"),
    ("sites.default.pue_=1.3", "sites.default.pue_", "pue"),
])
def test_unknown_field_suggests_the_nearest_name(small, item, path, suggestion):
    with pytest.raises(InputError) as ei:
        scn.load(small, [item])
    msg = str(ei.value)
    assert path in msg
    assert f"did you mean {suggestion!r}" in msg
    assert "\n" not in msg


def test_unknown_field_lists_the_fields_allowed_there(small):
    with pytest.raises(InputError) as ei:
        scn.load(small, ["pools.a.replcas=3"])
    msg = str(ei.value)
    assert "allowed here:" in msg
    for f in ("gpu", "model", "replicas", "tp", "pp", "precision", "site", "engine", "faults"):
        assert f in msg


# -- wrong types and out-of-range values ----------------------------------------------------------------
@pytest.mark.parametrize("item, needles", [
    ("pools.a.replicas=abc", ("pools.a.replicas", "'abc'", "integer")),
    ("pools.a.replicas=1.5", ("pools.a.replicas", "1.5", "integer")),
    ('duration_s="long"', ("duration_s", "'long'", "number")),
    ("pools.a.precision=int4", ("pools.a.precision", "'int4'", "'bf16', 'fp8' or 'fp4'")),
    ("streams.chat.kind=burst", ("streams.chat.kind", "'burst'", "'poisson'")),
    ("streams.chat.input_tokens=abc", ("streams.chat.input_tokens", "'abc'")),
    ("pools.a.engine=5", ("pools.a.engine", "dictionary", "5")),
    ("engine.kv_dtype=int8", ("engine.kv_dtype", "'int8'", "'bf16' or 'fp8'")),
])
def test_wrong_type_names_field_value_and_expectation(small, item, needles):
    with pytest.raises(InputError) as ei:
        scn.load(small, [item])
    for n in needles:
        assert n in str(ei.value)


@pytest.mark.parametrize("value", [0, -1, -10])
def test_replicas_must_be_positive(small, value):
    with pytest.raises(InputError) as ei:
        scn.load(small, [f"pools.a.replicas={value}"])
    msg = str(ei.value)
    assert "pools.a.replicas" in msg and f"(got {value})" in msg and "greater than or equal to 1" in msg


@pytest.mark.parametrize("field", ["token_budget", "max_batch"])
def test_engine_limits_must_be_positive(small, field):
    with pytest.raises(InputError) as ei:
        scn.load(small, [f"engine.{field}=0"])
    msg = str(ei.value)
    assert f"engine.{field}" in msg and "(got 0)" in msg and "greater than or equal to 1" in msg


@pytest.mark.parametrize("item, needles", [
    ("duration_s=0", ("duration_s", "greater than 0", "(got 0)")),
    ("duration_s=-5", ("duration_s", "(got -5)")),
    ("streams.chat.rate=0", ("streams.chat", "needs rate")),
    ("pools.a.faults.mttr_h=0", ("pools.a.faults.mttr_h", "(got 0)")),
    ("engine.mem_util=1.5", ("engine.mem_util", "(got 1.5)")),
    ("pools.a.site=nowhere", ("pools.a.site", "'nowhere'", "default")),
])
def test_out_of_range_values(small, item, needles):
    with pytest.raises(InputError) as ei:
        scn.load(small, [item])
    for n in needles:
        assert n in str(ei.value)


@pytest.mark.parametrize("item", ["pools.a.engine.token_budget=0", "pools.a.engine.mem_util=2",
                                  "pools.a.engine.kv_dtype=int8"])
def test_pool_engine_override_values_are_validated(small, item):
    field = item.split("=")[0].rsplit(".", 1)[1]
    with pytest.raises(InputError) as ei:
        load_and_build(small, [item])
    assert "pools.a" in str(ei.value) and field in str(ei.value)


def test_boolean_is_not_an_integer(small):
    with pytest.raises(InputError, match=r"pools\.a\.replicas"):
        scn.load(small, ["pools.a.replicas=true"])


# -- names checked at build time ------------------------------------------------------------------------
def test_unknown_router_policy_is_an_input_error_at_build_time(small):
    sc = scn.load(small, ["router.policy=speed_awre"])      # any string passes the schema
    with pytest.raises(InputError) as ei:
        build(sc)
    msg = str(ei.value)
    assert msg.startswith("router.policy")
    assert "'speed_awre'" in msg and "Did you mean 'speed_aware'" in msg
    for p in ("round_robin", "least_outstanding", "power_of_two", "speed_aware", "session_affinity"):
        assert p in msg


@pytest.mark.parametrize("item, field, value, allowed", [
    ("engine.admission=lifo", "engine.admission", "'lifo'", ("fcfs", "priority")),
    ("engine.retention=fifo", "engine.retention", "'fifo'", ("lru", "pin_session", "none")),
    ("pools.b.engine.retention=fifo", "engine.retention", "'fifo'", ("lru", "pin_session", "none")),
    ("pools.b.engine.admission=lifo", "engine.admission", "'lifo'", ("fcfs", "priority")),
])
def test_unknown_admission_and_retention_name_the_field(small, item, field, value, allowed):
    sc = scn.load(small, [item])
    with pytest.raises(InputError) as ei:
        build(sc)
    msg = str(ei.value)
    pool = "b" if item.startswith("pools.b") else "a"
    assert f"pools.{pool}" in msg and field in msg and value in msg
    for a in allowed:
        assert a in msg


@pytest.mark.parametrize("item, needles", [
    ("pools.a.gpu=H900", ("pools.a", "unknown GPU 'H900'", "Did you mean 'H200'", "H100-SXM", "B200")),
    ("pools.a.model=Llama-9-8B", ("pools.a", "unknown model 'Llama-9-8B'", "Did you mean 'Llama-3-8B'")),
    ("pools.a.tp=16", ("pools.a", "tp=16", "8 GPUs")),
    ("streams.chat.model=Llama-3-70B", ("streams.chat.model", "'Llama-3-70B'", "Llama-3-8B")),
])
def test_unknown_catalog_names_at_build_time(small, item, needles):
    with pytest.raises(InputError) as ei:
        load_and_build(small, [item])
    for n in needles:
        assert n in str(ei.value)


def test_unknown_stream_model_names_the_field(small):
    with pytest.raises(InputError) as ei:
        load_and_build(small, ["streams.chat.model=Foo-7B"])
    assert "streams.chat.model" in str(ei.value) and "'Foo-7B'" in str(ei.value)


def test_impossible_deployment_names_needed_and_available_memory(small):
    cat = agentsim.load_catalog()
    need = cat.model("Llama-3-70B").weight_bytes("bf16") / 1e9
    have = cat.gpu("H100-SXM").hbm_gb * 0.9
    assert need > have  # the premise: 70B in bf16 does not fit one 80 GB GPU
    with pytest.raises(InputError) as ei:
        load_and_build(small, ["pools.a.model=Llama-3-70B"])
    msg = str(ei.value)
    assert msg.startswith("pools.a: ")
    assert "weights do not fit" in msg
    assert f"needs {need:.1f} GB" in msg
    assert f"{have:.1f} GB usable" in msg
    assert "raise tp/pp" in msg
    # the same model fits on 4 GPUs
    load_and_build(small, ["pools.a.model=Llama-3-70B", "pools.a.tp=4"])


# -- outages --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("outage, needles", [
    ("{target='pool:a', start_s=60, end_s=70}", ("outages[0]", "60", "after the run ends")),
    ("{target='pool:a', start_s=100, end_s=200}", ("outages[0]", "100", "after the run ends")),
    ("{target='pool:zz', start_s=1, end_s=2}", ("outages[0].target", "'pool:zz'", "no such pool", "a, b")),
    ("{target='site:mars', start_s=1, end_s=2}", ("outages[0].target", "'site:mars'", "no such site", "default")),
    ("{target='rack:a', start_s=1, end_s=2}", ("target must be 'pool:<name>' or 'site:<name>'", "'rack:a'")),
    ("{target='pool:a', start_s=10, end_s=5}", ("end_s (5", "after start_s (10")),
    ("{target='pool:a', start_s=-1, end_s=5}", ("start_s", "(got -1)")),
])
def test_bad_outages(small, outage, needles):
    with pytest.raises(InputError) as ei:
        scn.load(small, [f"outages=[{outage}]"])
    for n in needles:
        assert n in str(ei.value)


def test_outage_ending_after_the_run_is_fine(small):
    sc = scn.load(small, ["outages=[{target='pool:a', start_s=30, end_s=1000}]"])
    assert sc.outages[0].end_s == 1000
    build(sc)


# -- files ----------------------------------------------------------------------------------------------
def test_missing_file_directory_and_bad_toml(tmp_path):
    with pytest.raises(InputError, match=r"nope\.toml: not found"):
        scn.load(tmp_path / "nope.toml")
    with pytest.raises(InputError, match=r"is a directory"):
        scn.load(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nduration_s = = 3\n')
    with pytest.raises(InputError, match=r"bad\.toml: not valid TOML \(.*line 2"):
        scn.load(bad)
    with pytest.raises(InputError, match=r"unknown preset 'engine_mixd'.*Did you mean 'engine_mixed'"):
        load_scenario("engine_mixd")


def test_scenario_needs_a_pool(tmp_path):
    p = tmp_path / "nopool.toml"
    p.write_text('name = "x"\n')
    with pytest.raises(InputError, match=r"pools"):
        scn.load(p)
    p.write_text('name = "x"\npools = {}\n')
    with pytest.raises(InputError, match=r"at least one pool"):
        scn.load(p)


# -- the CLI: exit code 2, one line, no traceback ---------------------------------------------------------
CLI_CASES = [
    (["--set", "duratoin_s=5"], ("duratoin_s", "did you mean 'duration_s'")),
    (["--set", "pools.a.replcas=3"], ("pools.a.replcas", "did you mean 'replicas'")),
    (["--set", "streams.chat.rat=3"], ("streams.chat.rat", "did you mean 'rate'")),
    (["--set", "pools.a.engine.max_bach=3"], ("pools.a.engine.max_bach", "did you mean 'max_batch'")),
    (["--set", "pools.a.replicas=abc"], ("pools.a.replicas", "'abc'", "integer")),
    (["--set", "pools.a.replicas=0"], ("pools.a.replicas", "(got 0)", "greater than or equal to 1")),
    (["--set", "pools.a.replicas=-3"], ("pools.a.replicas", "(got -3)")),
    (["--set", "engine.token_budget=0"], ("engine.token_budget", "(got 0)")),
    (["--set", "router.policy=fastest"], ("router.policy", "'fastest'", "speed_aware")),
    (["--set", "engine.admission=lifo"], ("engine.admission", "'lifo'", "fcfs, priority")),
    (["--set", "engine.retention=fifo"], ("engine.retention", "'fifo'", "lru, pin_session, none")),
    (["--set", "pools.a.gpu=H900"], ("pools.a", "'H900'", "H100-SXM")),
    (["--set", "pools.a.model=Llama-9-8B"], ("pools.a", "'Llama-9-8B'", "Llama-3-8B")),
    (["--set", "pools.a.model=Llama-3-70B"], ("pools.a", "weights do not fit", "GB usable")),
    (["--set", "outages=[{target='pool:a',start_s=100,end_s=200}]"], ("outages[0]", "after the run ends")),
    (["--set", "outages=[{target='pool:zz',start_s=1,end_s=2}]"], ("'pool:zz'", "no such pool")),
    (["--set", "pools.a"], ("--set 'pools.a'", "PATH=VALUE")),
]


@pytest.mark.parametrize("extra, needles", CLI_CASES, ids=[c[0][-1] for c in CLI_CASES])
def test_cli_bad_input_is_one_line_and_exit_2(small, capsys, extra, needles):
    code, out, err = run_cli(["run", str(small), "--no-progress", "--format", "json", *extra], capsys)
    assert out == ""
    assert_one_line_error(code, err, *needles)


def test_cli_missing_file_bad_toml_and_unknown_preset(tmp_path, capsys):
    code, _, err = run_cli(["run", str(tmp_path / "missing.toml"), "--no-progress"], capsys)
    assert_one_line_error(code, err, "missing.toml", "not found")
    bad = tmp_path / "bad.toml"
    bad.write_text("[pools.a\n")
    code, _, err = run_cli(["run", str(bad), "--no-progress"], capsys)
    assert_one_line_error(code, err, "bad.toml", "not valid TOML")
    code, _, err = run_cli(["run", "nothere", "--no-progress"], capsys)
    assert_one_line_error(code, err, "unknown preset 'nothere'", "engine_mixed")
    code, _, err = run_cli(["scenario", "show", "nothere"], capsys)
    assert_one_line_error(code, err, "unknown preset 'nothere'", "engine_mixed")


def test_cli_bad_pool_engine_override_is_one_line_and_exit_2(small):
    proc = subprocess.run([AGENTSIM, "run", str(small), "--no-progress",
                           "--set", "pools.a.engine.token_budget=0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "pools.a.engine.token_budget" in proc.stderr


def test_cli_subprocess_error_has_no_traceback(tmp_path):
    """The real entry point (a fresh interpreter): exit 2, one line, no traceback."""
    proc = subprocess.run([AGENTSIM, "run", str(tmp_path / "nope.toml"),
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: scenario file {tmp_path / 'nope.toml'}: not found"]


# -- the schema -----------------------------------------------------------------------------------------
def _models(schema: dict) -> dict:
    out = dict(schema.get("$defs", {}))
    out["Scenario"] = schema
    return out


def test_schema_command_prints_json_with_descriptions(capsys):
    code, out, err = run_cli(["scenario", "schema"], capsys)
    assert code == 0 and err == ""
    schema = json.loads(out)
    assert schema == scn.schema()
    assert schema["title"] == "Scenario" and schema["required"] == ["pools"]
    models = _models(schema)
    for name in ("Pool", "Stream", "EngineSettings", "Router", "Outage", "Site", "Faults"):
        assert name in models, name
    # the fields users set most often all say what they mean
    for model, fields in {"Scenario": ("duration_s", "warmup_s", "seed", "sample_s", "pools", "streams"),
                          "Pool": ("gpu", "model", "replicas", "tp", "pp", "precision", "site", "engine"),
                          "EngineSettings": ("max_batch", "token_budget", "admission", "retention", "mem_util"),
                          "Router": ("policy", "affinity_load_bound"),
                          "Stream": ("kind", "rate", "concurrency", "count", "model", "file"),
                          "Faults": ("mtbf_h", "mttr_h")}.items():
        props = models[model]["properties"]
        for f in fields:
            assert len(props[f].get("description", "")) > 5, f"{model}.{f} has no description"
    # allowed names are in the description where the schema cannot enumerate them
    assert "speed_aware" in models["Router"]["properties"]["policy"]["description"]
    assert "pin_session" in models["EngineSettings"]["properties"]["retention"]["description"]
    # defaults are in the schema
    assert models["Scenario"]["properties"]["duration_s"]["default"] == 3600.0
    assert models["Pool"]["properties"]["replicas"]["default"] == 1


def test_schema_documents_every_scalar_field():
    missing = [f"{m}.{k}" for m, s in _models(scn.schema()).items() for k, p in s.get("properties", {}).items()
               if "description" not in p and "$ref" not in p and "additionalProperties" not in p
               and "items" not in p]
    assert missing == []


def test_a_set_that_starts_a_new_table_names_its_missing_fields_once():
    """--set pools.X.autoscale.min_replicas on a pool without autoscaling: the error blames the --set
    (not the file) and lists every required field the new table lacks, once."""
    from agentsim.util.errors import InputError
    with pytest.raises(InputError) as e:
        scn.load(scn.Path(__file__).resolve().parents[1] / "agentsim" / "scenarios" / "default.toml",
                 ["pools.h100.autoscale.min_replicas=1"])
    msg = str(e.value)
    assert msg.count("--set 'pools.h100.autoscale.min_replicas=1'") == 1
    assert "pools.h100.autoscale is not in" in msg and "max_replicas" in msg and "target_value" in msg
