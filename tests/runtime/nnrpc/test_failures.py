"""When the server is not there or goes away, the guest gets RUNTIME_ERROR (5) and the log one line naming the
URI; never success with an unwritten result, never a trap. A restarted server serves new runs at once."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from kwasi_testing.guests import built_guest
from kwasi_testing.models import smollm2_gguf
from kwasi_testing.nnrpc import cli, quiet_env, server_process

ENDLESS = json.dumps({"temp": 0, "ignore-eos": True, "ctx-size": 2048, "n-gpu-layers": 0})


def test_an_unreachable_server_is_runtime_error_and_one_log_line(tmp_path: Path) -> None:
    uri = f"unix://{tmp_path}/nobody.sock"
    r = subprocess.run(cli("run", "--nn-rpc-uri", uri, "--nn-rpc-connect-timeout", "0.5", built_guest("llm_stream"),
                           "default", "hello"), capture_output=True, text=True, timeout=120, env=quiet_env())
    assert r.returncode == 1
    assert "load_by_name_with_config failed: 5" in r.stderr  # RUNTIME_ERROR, and the guest never got a handle
    logged = [line for line in r.stderr.splitlines() if uri in line]
    assert len(logged) == 1 and "not reachable" in logged[0], r.stderr


def test_a_server_killed_mid_stream_fails_the_guest_cleanly_and_a_restart_serves_again(tmp_path: Path) -> None:
    uri = f"unix://{tmp_path}/nn.sock"
    preload = ("--nn-preload", f"default:GGML:AUTO:{smollm2_gguf()}")
    guest: list[str | Path] = ["run", "--nn-rpc-uri", uri, "--timeout", "120", built_guest("llm_stream"), "default",
                               "Tell a story."]
    with server_process(uri, *preload) as server:
        run = subprocess.Popen(cli(*guest, ENDLESS), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=quiet_env())
        assert run.stdout is not None
        run.stdout.read(20)  # tokens are flowing
        server.send_signal(signal.SIGKILL)
        _, err = run.communicate(timeout=120)
    assert run.returncode == 1, err  # the guest's own exit after an errno, not a trap (134)
    assert "compute_single failed: 5" in err
    assert sum(uri in line for line in err.splitlines()) >= 1
    chat = json.dumps([{"role": "user", "content": "Say hello."}])
    with server_process(uri, *preload):  # the dead server's socket file is replaced
        r = subprocess.run(cli(*guest[:-1], chat, json.dumps({"chat": True, "temp": 0, "n-gpu-layers": 0})),
                           capture_output=True, text=True, timeout=300, env=quiet_env())
    assert r.returncode == 0 and "[stop] code 100" in r.stderr, r.stderr


def test_serve_does_not_start_without_the_servers_model_list(tmp_path: Path) -> None:
    uri = f"unix://{tmp_path}/nobody.sock"
    r = subprocess.run(cli("serve", "--nn-rpc-uri", uri, "--nn-rpc-connect-timeout", "0.5", "--port", "0"),
                       capture_output=True, text=True, timeout=120, env=quiet_env())
    assert r.returncode == 2 and f"--nn-rpc-uri {uri}: cannot list the server's models" in r.stderr, r.stderr
