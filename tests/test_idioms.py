"""The shared idioms: one atomic write, one executor, one outcome vocabulary for refusals."""
from __future__ import annotations

import os
import stat

import pytest

from agentsim.util.atomic import write_atomic
from agentsim.util.errors import InputError
from agentsim.studies.executor import Executor, InlineExecutor, run_all


def test_write_atomic_text_bytes_and_writer(tmp_path):
    p = write_atomic(tmp_path / "sub" / "a.txt", "héllo")
    assert p.read_bytes() == "héllo".encode()
    write_atomic(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    write_atomic(p, lambda f: f.write(b"xyz"))
    assert p.read_bytes() == b"xyz"
    assert [f.name for f in p.parent.iterdir()] == ["a.txt"], "a temporary file was left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, "not the permissions of an ordinary open()"


def test_write_atomic_keeps_the_old_file_when_the_writer_fails(tmp_path):
    p = write_atomic(tmp_path / "a.txt", "old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        write_atomic(p, broken)
    assert p.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_write_atomic_names_an_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            write_atomic(ro / "a.txt", "x")
    finally:
        ro.chmod(0o700)


def _square_plus(x: int, y: int) -> int:
    return x * x + y


def test_run_all_same_results_inline_and_on_a_pool():
    tasks = [(i, 10 * i) for i in range(7)]
    expected = [i * i + 10 * i for i in range(7)]
    assert run_all(_square_plus, tasks, workers=0) == expected
    assert run_all(_square_plus, tasks, workers=2) == expected
    assert run_all(_square_plus, tasks, executor=InlineExecutor()) == expected


def test_executor_refuses_negative_workers_and_opens_inline_for_zero():
    with pytest.raises(InputError, match="--workers"):
        Executor(workers=-1)
    with Executor(workers=0) as ex:
        assert isinstance(ex.open(), InlineExecutor) and ex.inline and not ex.remote


def test_refusals_are_outcomes_and_the_chaos_policy_may_also_fail_a_replica():
    from agentsim.provider.policies import POLICY_OUTCOMES, REJECTIONS
    from agentsim.serving.request import OUTCOMES
    assert set(REJECTIONS) < set(POLICY_OUTCOMES) <= set(OUTCOMES)
    assert set(POLICY_OUTCOMES) - set(REJECTIONS) == {"replica_failed"}
    assert not {"completed", "in_flight", "cancelled", "timed_out"} & set(POLICY_OUTCOMES)


def test_refusals_have_one_home():
    """Result counts, and policies return, the one tuple defined beside OUTCOMES."""
    from agentsim.serving import request
    from agentsim.results import result
    from agentsim.provider.policies import REJECTIONS
    assert result.REJECTIONS is REJECTIONS is request.REJECTIONS
