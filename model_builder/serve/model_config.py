"""--model_config_file: TF Serving's ModelServerConfig text proto, parsed with its own proto classes.

TF Serving 2.11 (model_servers/server.cc, tag 2.11.0) reads the file when the flag is non-empty
and then ignores --model_name/--model_base_path (BuildSingleModelConfig is used only when the
file is empty). Each ModelConfig names a model, its absolute base_path, its
model_version_policy (sources/storage_path/file_system_storage_path_source.cc: latest N, all,
specific) and version_labels. The checks below are the ones server_core.cc makes before
serving (ValidateModelConfigList, GetPlatform); they fail here with exit 2 and one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model_builder.errors import ConfigError

POLICIES = ("latest", "all", "specific")


@dataclass(frozen=True)
class VersionPolicy:
    """ServableVersionPolicy (config/file_system_storage_path_source.proto); default: latest 1."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def aspired(self, on_disk: list[int]) -> list[int]:
        """The versions TF Serving aspires to serve among the numeric folders on disk, ascending.

        file_system_storage_path_source.cc: AspireLatestVersions takes the max(num_versions, 1)
        highest; AspireAllVersions every version; AspireSpecificVersions those listed that exist
        (a listed version missing on disk is only a logged warning there, and here).
        """
        versions = sorted(set(on_disk))
        if self.kind == "all":
            return versions
        if self.kind == "specific":
            return [v for v in versions if v in self.versions]
        return versions[-max(self.num_versions, 1) :] if versions else []

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {{ num_versions: {max(self.num_versions, 1)} }}"
        if self.kind == "specific":
            return f"specific {{ versions: {list(self.versions)} }}"
        return "all {}"


@dataclass(frozen=True)
class ModelEntry:
    """One ModelConfig of the file: what one ModelManager serves."""

    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: tuple[tuple[str, int], ...] = ()


def _policy(proto) -> VersionPolicy:
    kind = proto.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        if not proto.specific.versions:
            raise ValueError("model_version_policy specific {} lists no versions")
        return VersionPolicy("specific", versions=tuple(sorted(set(proto.specific.versions))))
    # POLICY_CHOICE_NOT_SET falls through to latest (file_system_storage_path_source.cc).
    return VersionPolicy("latest", num_versions=max(proto.latest.num_versions, 1) if kind else 1)


def _entry(config) -> ModelEntry:
    """One ModelConfig -> ModelEntry, with server_core.cc's checks (ValueError naming the problem)."""
    if not config.name:
        raise ValueError("a config {} has no name")
    # server_core.cc GetPlatform: model_platform (or the deprecated model_type TENSORFLOW) is required,
    # and only "tensorflow" has a platform config in a default tensorflow_model_server.
    if config.model_type and config.model_platform:
        raise ValueError(f"model {config.name}: both model_type (deprecated) and model_platform are set")
    platform = "tensorflow" if config.model_type == 1 else config.model_platform
    if not platform:
        raise ValueError(f'model {config.name}: set model_platform: "tensorflow" (TF Serving refuses neither)')
    if platform != "tensorflow":
        raise ValueError(f"model {config.name}: PlatformConfigMap has no entry for platform {platform}")
    # server_core.cc ValidateModelConfigList: without --model_config_list_root_dir every base_path is absolute.
    if not config.base_path.startswith("/"):
        raise ValueError(
            f"model {config.name}: expected an absolute base_path, got base_path()={config.base_path or '(empty)'}"
        )
    labels = tuple(sorted((label, int(version)) for label, version in config.version_labels.items()))
    return ModelEntry(config.name, Path(config.base_path), _policy(config.model_version_policy), labels)


def parse_model_config_file(path: Path) -> tuple[ModelEntry, ...]:
    """Reads a ModelServerConfig text proto; ConfigError (one line naming file and problem) when TF Serving would refuse it."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    flag = f"--model_config_file {path}"
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{flag}: {err.strerror}") from None
    try:
        proto = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as err:
        raise ConfigError(f"{flag}: not a valid ModelServerConfig text proto: {err}") from None
    if proto.WhichOneof("config") != "model_config_list":
        raise ConfigError(f"{flag}: no model_config_list (custom_model_config is not supported)")
    entries, names = [], set()
    for config in proto.model_config_list.config:
        try:
            entry = _entry(config)
        except ValueError as err:
            raise ConfigError(f"{flag}: {err}") from None
        if entry.name in names:
            raise ConfigError(f"{flag}: Illegal to list model {entry.name} multiple times in config list")
        names.add(entry.name)
        entries.append(entry)
    if not entries:
        # An empty list would serve nothing; TF Serving starts and answers NOT_FOUND, a stand-in must not.
        raise ConfigError(f"{flag}: model_config_list has no config {{ name: ... base_path: ... }}")
    return tuple(entries)
