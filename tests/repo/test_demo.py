"""`make demo`, the README's first command, end to end: build both MovieLens models, serve them with
the local server, query them over gRPC, stop the servers; exit 0 only when every step worked."""

from __future__ import annotations

import support
from model_builder.serve.process import free_port


def test_the_demo_runs_end_to_end_and_shows_user_1_nothing_they_rated_and_a_filtered_list(tmp_path):
    # The demo's second server takes PORT+2 / REST_PORT+2.
    port, rest_port = free_port(), free_port()
    proc = support.run_cli(
        "demo", "--out", str(tmp_path / "models"), "--port", str(port), "--rest-port", str(rest_port), timeout=1200
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(0 of the 272 movies user 1 rated are in this list" in proc.stdout, proc.stdout[-3000:]
    # The filtered query (search_filtered), checked by the demo against u.item.
    assert "(10 of 10 are comedies from 1990 on by u.item; 0 rated by user 1)" in proc.stdout, proc.stdout[-3000:]
    assert "servers stopped;" in proc.stdout and "unexpected exit codes" not in proc.stdout
