"""`least_squares_batch(distributed=True)` over real processes of a `jax.distributed` job on
127.0.0.1 (tests/distributed_worker.py is one process), and examples/multi_host.py."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from distributed_worker import CHUNK_SIZE, FAILING_FIT, NUM_FITS, batch, decay

import jaxlm

TESTS = pathlib.Path(__file__).resolve().parent
WORKER = TESTS / "distributed_worker.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command_of, num_processes):
    """Start `num_processes` processes (command_of(port, i) is process i's command line)."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    env.pop("XLA_FLAGS", None)
    return [
        subprocess.Popen(
            command_of(port, i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for i in range(num_processes)
    ]


def _wait(processes, timeout):
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail(f"a process of the job was still running after {timeout} s")
    return outputs


@pytest.fixture(scope="module")
def one_process():
    x0, t, y = batch()
    return jaxlm.least_squares_batch(
        decay, x0, (t, y), in_axes=(None, 0), chunk_size=CHUNK_SIZE, progress=False
    )


@pytest.mark.parametrize("num_processes", [2, 4])
def test_every_process_gets_the_one_process_solution(num_processes, one_process, tmp_path):
    processes = _start(
        lambda port, i: [
            sys.executable,
            str(WORKER),
            str(port),
            str(num_processes),
            str(i),
            "solve",
            str(tmp_path / f"{i}.npz"),
        ],
        num_processes,
    )
    for process, (_out, err) in zip(processes, _wait(processes, timeout=300), strict=True):
        assert process.returncode == 0, err[-3000:]
    blocks = np.array_split(np.arange(NUM_FITS), num_processes)
    for i in range(num_processes):
        result = np.load(tmp_path / f"{i}.npz")
        # The whole batch, in every process, to the last bit of the one-process solve.
        np.testing.assert_array_equal(result["params"], one_process.params)
        np.testing.assert_array_equal(result["status"], one_process.status)
        np.testing.assert_array_equal(result["num_steps"], one_process.num_steps)
        np.testing.assert_array_equal(result["cost"], one_process.cost)
        # Each process had NaN data outside its block, and solved only its block: the fits of
        # its own block, all converged but the one whose data are NaN everywhere.
        begin, end = result["block"]
        assert (begin, end) == (blocks[i][0], blocks[i][-1] + 1)
        np.testing.assert_array_equal(result["local_params"], one_process.params[begin:end])
        failed = np.flatnonzero(~np.isin(result["local_status"], jaxlm._solution.SUCCESS_CODES)) + begin
        assert failed.tolist() == ([FAILING_FIT] if begin <= FAILING_FIT < end else [])
    # The failing fit is a status in the gathered solution, not a crash of the job.
    assert one_process.status[FAILING_FIT] == jaxlm.Status.NONFINITE_START
    assert np.sum(one_process.success) == NUM_FITS - 1


def test_a_process_that_dies_makes_the_others_fail_within_the_heartbeat_timeout(tmp_path):
    # The last process exits before its share; JAX's coordination service misses its heartbeats
    # (5 s in the worker) and terminates the others, instead of leaving them in the gather.
    processes = _start(
        lambda port, i: [
            sys.executable,
            str(WORKER),
            str(port),
            "2",
            str(i),
            "die",
            str(tmp_path / f"{i}.npz"),
        ],
        2,
    )
    outputs = _wait(processes, timeout=120)
    assert processes[1].returncode == 3
    assert processes[0].returncode != 0 and not (tmp_path / "0.npz").exists()
    assert "another task died" in outputs[0][1]


def test_distributed_needs_a_distributed_job():
    x0, t, y = batch()
    with pytest.raises(
        RuntimeError, match=r"needs a jax\.distributed job: call jax\.distributed\.initialize"
    ):
        jaxlm.least_squares_batch(decay, x0, (t, y), in_axes=(None, 0), distributed=True)
    with pytest.raises(RuntimeError, match=r"jax\.distributed\.initialize"):
        jaxlm.process_block(NUM_FITS)


def test_the_multi_host_example_runs_on_two_local_processes(tmp_path):
    example = TESTS.parent / "examples" / "multi_host.py"
    output = tmp_path / "fits.npz"

    def command(port, i):
        return [sys.executable, str(example), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                "--process-id", str(i), "--num-fits", "2001", "--output", str(output)]  # fmt: skip

    processes = _start(command, 2)
    outputs = _wait(processes, timeout=300)
    assert [process.returncode for process in processes] == [0, 0], outputs[0][1][-3000:]
    assert "process 0 of 2: solved fits 0–1000" in outputs[0][0]
    assert "process 1 of 2: solved fits 1001–2000" in outputs[1][0]
    assert "and has all 2001 back" in outputs[1][0]
    assert "converged: 100.00%" in outputs[0][0]
    saved = np.load(output)
    assert saved["params"].shape == (2001, 5) and np.all(saved["status"] >= 0)
