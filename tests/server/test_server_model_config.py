"""--model_config_file like tensorflow_model_server 2.11: a ModelServerConfig text proto replaces
--model_name/--model_base_path (model_servers/server.cc), model_version_policy picks the served
versions (sources/storage_path/file_system_storage_path_source.cc), version_labels name them, and
what server_core.cc refuses (relative base_path, a model listed twice, no platform) stops the
server with exit 2 and one line.
"""

from __future__ import annotations

import numpy as np
import pytest

import support
from model_builder.errors import ConfigError
from model_builder.serve.model_config import VersionPolicy, parse_model_config_file
from support import harness

NAME = "two_versions"


def _config(base_path, policy: str = "latest { num_versions: 2 }", extra: str = "") -> str:
    return (
        "model_config_list {\n  config {\n"
        f'    name: "{NAME}"\n    base_path: "{base_path}"\n    model_platform: "tensorflow"\n'
        f"    model_version_policy {{ {policy} }}\n{extra}  }}\n}}\n"
    )


def _ids(response) -> list[bytes]:
    return harness.outputs(response)["ids"].reshape(-1).tolist()


def test_latest_two_serves_both_versions_then_the_newest_two(tmp_path, items_model, items_v2_model):
    model_dir = tmp_path / "models" / NAME
    harness.publish_copy(items_model, model_dir, 1)
    harness.publish_copy(items_v2_model, model_dir, 2)
    config = tmp_path / "models.config"
    config.write_text(_config(model_dir, extra='    version_labels { key: "stable" value: 1 }\n'))
    # --model-name/--model-base-path (always passed by process.start) point elsewhere: the file wins.
    with support.local_server(
        tmp_path / "nowhere", NAME, "--model_config_file", str(config), log_dir=tmp_path
    ) as server:
        server.wait_available(2)
        raw = harness.Raw(server.target)
        try:
            assert raw.states(model=NAME) == {1: "AVAILABLE", 2: "AVAILABLE"}
            answers = {}
            for version in (1, 2):
                response = raw.predict(harness.ids_request(["sku-1"], model=NAME, version=version))
                assert response.model_spec.version.value == version
                answers[version] = _ids(response)
            # items_model answers K=10, items_v2_model K=5: each answer came from the version asked for.
            assert (len(answers[1]), len(answers[2])) == (10, 5)
            latest = raw.predict(harness.ids_request(["sku-1"], model=NAME))
            assert latest.model_spec.version.value == 2
            labelled = raw.predict(harness.ids_request(["sku-1"], model=NAME, label="stable"))
            assert labelled.model_spec.version.value == 1 and _ids(labelled) == answers[1]
            # A third version: latest 2 aspires {2, 3}; 1 unloads once 3 serves.
            harness.publish_copy(items_model, model_dir, 3)
            support.wait_for(
                lambda: raw.states(model=NAME) == {1: "END", 2: "AVAILABLE", 3: "AVAILABLE"}, 120, "versions {2, 3}"
            )
            gone = harness.rpc_error(raw.predict, harness.ids_request(["sku-1"], model=NAME, version=1))
            assert gone.code().name == "NOT_FOUND"
            assert np.array_equal(_ids(raw.predict(harness.ids_request(["sku-1"], model=NAME, version=3))), answers[1])
        finally:
            raw.close()


def test_the_version_policies_pick_the_versions_tf_serving_aspires():
    # file_system_storage_path_source.cc AspireLatestVersions / AspireAllVersions / AspireSpecificVersions.
    on_disk = [3, 1, 7, 5]
    assert VersionPolicy().aspired(on_disk) == [7]
    assert VersionPolicy("latest", num_versions=2).aspired(on_disk) == [5, 7]
    assert VersionPolicy("latest", num_versions=0).aspired(on_disk) == [7]  # max(num_versions, 1)
    assert VersionPolicy("all").aspired(on_disk) == [1, 3, 5, 7]
    assert VersionPolicy("specific", versions=(3, 4)).aspired(on_disk) == [3]  # 4 is missing: only a warning
    assert VersionPolicy("latest", num_versions=2).aspired([]) == []


def test_the_config_file_is_read_with_tf_servings_proto(tmp_path):
    config = tmp_path / "models.config"
    config.write_text(
        _config(tmp_path / "a", "specific { versions: 2 versions: 1 }", '    version_labels { key: "stable" value: 1 }\n')
        .replace("model_config_list {\n", 'model_config_list {\n  config { name: "b" base_path: "/b" model_type: TENSORFLOW }\n')
    )  # fmt: skip
    b, a = parse_model_config_file(config)
    assert (b.name, str(b.base_path), b.policy, b.labels) == ("b", "/b", VersionPolicy(), ())
    assert (a.name, a.base_path, a.policy) == (NAME, tmp_path / "a", VersionPolicy("specific", versions=(1, 2)))
    assert a.labels == (("stable", 1),)


BAD = {
    "relative base_path": (
        'model_config_list { config { name: "m" base_path: "models/m" model_platform: "tensorflow" } }',
        "expected an absolute base_path",
    ),
    "listed twice": (
        'model_config_list { config { name: "m" base_path: "/m" model_platform: "tensorflow" } '
        'config { name: "m" base_path: "/n" model_platform: "tensorflow" } }',
        "Illegal to list model m multiple times",
    ),
    "no platform": ('model_config_list { config { name: "m" base_path: "/m" } }', 'model_platform: "tensorflow"'),
    "typo": ('model_config_list { config { name: "m" base_paht: "/m" } }', "not a valid ModelServerConfig"),
    "empty specific": (
        'model_config_list { config { name: "m" base_path: "/m" model_platform: "tensorflow" '
        "model_version_policy { specific { } } } }",
        "lists no versions",
    ),
    "no models": ("model_config_list { }", "has no config"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_config_file_tf_serving_refuses_is_a_config_error_naming_the_problem(tmp_path, case):
    text, expected = BAD[case]
    config = tmp_path / "models.config"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        parse_model_config_file(config)
    message = str(caught.value)
    assert message.startswith(f"--model_config_file {config}: ") and expected in message and "\n" not in message


def test_the_server_refuses_a_bad_config_file_with_exit_2_and_one_line(tmp_path):
    config = tmp_path / "models.config"
    config.write_text(BAD["relative base_path"][0])
    proc = support.run_cli("serve", "--model_config_file", str(config), "--port", "0", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: --model_config_file {config}: model m: expected an absolute base_path, got base_path()=models/m"
    ]


def test_reloading_the_config_file_is_refused_not_ignored(tmp_path):
    config = tmp_path / "models.config"
    config.write_text(_config(tmp_path))
    proc = support.run_cli(
        "serve", "--model_config_file", str(config), "--model_config_file_poll_wait_seconds", "60", timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --model_config_file_poll_wait_seconds: "), lines
