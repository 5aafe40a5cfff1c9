"""The extraction's typed configuration: `ExtractConfig`, with its `download:` section (`DownloadConfig`) and
per-extractor settings (`extractor_configs`, checked against each registered extractor's settings).

These are the parameters of the `extract-features` flow (the Prefect UI shows them as a form; the server checks a
deployment run's parameters against their schema before the run starts) and of `avsed extract`. A config file and
overrides merge key by key (`resolve_extract_config`): `{"download": {"concurrency": 2}}` over a file that sets
`download.url_template` keeps the file's URL.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic.json_schema import WithJsonSchema

from avsed.core.config import ConfigError, did_you_mean, error_message, merge, read_yaml_mapping, resolve, validated
from features.base import extractor_class, extractor_names
from pipeline.download import DownloadConfig
from pipeline.ledger import Ledger
from avsed.core.store import DEFAULT_CLIPS_PER_SHARD

__all__ = ["ExtractConfig", "ExtractConfigError", "FEATURES", "resolve_extract_config"]

FEATURES = tuple(extractor_names())  # the registered extractors, when this module was imported
FeatureName = Literal[FEATURES]  # type: ignore[valid-type] - the registry's names, so the schema lists them
REQUIRED_PATHS = ("metadata", "audio_dir", "store")


class ExtractConfigError(ConfigError):
    """An extraction setting that cannot be used (the message names the key and the closest known one)."""


def _extractor_settings_schema() -> dict[str, Any]:
    """JSON schema of `extractor_configs`: per registered feature, its extractor's settings (unknown keys refused)."""
    properties = {}
    for name in FEATURES:
        schema = TypeAdapter(extractor_class(name).config_type).json_schema()
        schema["additionalProperties"] = False
        properties[name] = schema
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "description": "per-feature extractor settings, e.g. {\"vgg16\": {\"weights_path\": \"...\", "
                           "\"batch_size\": 128}}"}


# A plain mapping at run time (only the settings given, which extractors take as overrides of their defaults),
# described by the extractors' own settings in the schema.
ExtractorConfigs = Annotated[dict[str, dict[str, Any]], WithJsonSchema(_extractor_settings_schema())]


class ExtractConfig(BaseModel):
    """Everything one extraction run needs; serialisable, so a flow run, a deployment run and a CLI run are the
    same run."""

    # frozen: the run's stages share one config; unknown keys are errors (a typo must never run the defaults)
    model_config = ConfigDict(frozen=True, extra="forbid")

    # No default, but optional in the schema: a deployment run may take them from its config file.
    metadata: str | None = Field(None, description="DESED metadata folder (train/weak.tsv, validation/validation.tsv, "
                                                   "...); required, here or in the config file")
    audio_dir: str | None = Field(None, description="DESED audio folder (train/weak/, validation/, ...); required")
    store: str | None = Field(None, description="the feature store to create or grow (features.zarr); required")
    features: tuple[FeatureName, ...] = Field(("logmel",), description="features to extract: "
                                                                      + ", ".join(FEATURES))
    extractor_configs: ExtractorConfigs = Field(default_factory=dict)
    download: DownloadConfig = Field(default_factory=DownloadConfig, description="how videos are downloaded")
    video_dir: str | None = Field(None, description="where downloaded clips go; null: <store>.videos")
    frame_size: int = Field(224, ge=1, description="decoded frames are frame_size x frame_size pixels (recorded in "
                                                   "the visual features' provenance)")
    recheck_missing: bool = Field(False, description="retry videos recorded as permanently missing")
    recheck_available: bool = Field(True, description="re-check cached clips' videos so that newly vanished ones "
                                                      "are recorded (their features are kept)")
    # ... but only those last checked more than this many days ago: a rerun does not ask the host about every
    # cached video every time.
    recheck_after_days: float = Field(30.0, ge=0, description="re-check only videos last checked more than this "
                                                              "many days ago")
    allow_random_weights: bool = Field(False, description="seeded random weights when a weights file is absent "
                                                          "(tests and demos; recorded as weights: random)")
    # Clips per upload batch of the embedding worker (its fixed shape: batch_clips x 64 frames). Each CNN runs its
    # own `batch_size` frames per forward pass over it.
    batch_clips: int = Field(16, ge=1, description="clips per upload batch of the embedding worker")
    max_clips_in_flight: int | None = Field(None, ge=1, description="decoded clips alive at once (the video "
                                                                    "stream's memory bound); null: a quarter of "
                                                                    "the available memory")
    decode_workers: int | None = Field(None, ge=1, description="ffmpeg decoder processes (and audio threads); "
                                                               "null: the machine's cores")
    shards_in_flight: int = Field(2, ge=1, description="Prefect flow: shards downloaded or embedded at once")
    clips_per_shard: int = Field(DEFAULT_CLIPS_PER_SHARD, ge=1, description="a new store's shard size (an "
                                                                            "existing store keeps its own)")
    compute_stats: bool = Field(True, description="update the per-bin training statistics after the run")

    @field_validator("extractor_configs")
    @classmethod
    def _extractor_configs(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out = {}
        for feature, settings in value.items():
            if feature not in FEATURES:
                raise ValueError(f"unknown feature {feature!r}{did_you_mean(feature, FEATURES)}; registered: "
                                 f"{', '.join(FEATURES)}")
            config_type = extractor_class(feature).config_type
            known = [f.name for f in dataclasses.fields(config_type)]
            unknown = [k for k in settings if k not in known] if isinstance(settings, dict) else []
            if unknown:  # (a dataclass validated on its own ignores unknown keys)
                hints = ", ".join(f"{k!r}{did_you_mean(k, known)}" for k in unknown)
                raise ValueError(f"{feature}: unknown keys {hints}; known: {', '.join(known)}")
            try:
                checked = TypeAdapter(config_type).validate_python(settings)
            except ValidationError as exc:
                raise ValueError(error_message(exc, config_type, feature)) from None
            out[feature] = {k: getattr(checked, k) for k in settings}  # the given keys, as their types
        return out

    # -- the paths --------------------------------------------------------------------------------------------
    def validate(self) -> "ExtractConfig":
        """The config, if it names what every run needs (metadata, audio and store paths)."""
        missing = [name for name in REQUIRED_PATHS if not getattr(self, name)]
        if missing:
            raise ExtractConfigError(f"missing {', '.join(missing)}: give them in the config (or config file), or "
                                     f"as --{', --'.join(m.replace('_', '-') for m in missing)}")
        return self

    @property
    def ledger_path(self) -> Path:
        return Ledger.path_for_store(self.validate().store)

    @property
    def video_path(self) -> Path:
        return Path(self.video_dir) if self.video_dir else Path(str(self.validate().store) + ".videos")

    # -- YAML / JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain data (YAML and JSON safe); `from_dict` gives the same config back."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> "ExtractConfig":
        """A complete, checked config (unknown keys and wrong types are one ExtractConfigError line)."""
        try:
            return validated(cls, data, source or "extraction config").validate()
        except ExtractConfigError:
            raise
        except ConfigError as exc:
            raise ExtractConfigError(str(exc)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "ExtractConfig":
        """A YAML file's settings with `overrides` merged in key by key (None values are left out)."""
        return cls.from_dict(merge(read_yaml_mapping(path), {k: v for k, v in overrides.items() if v is not None}),
                             source=str(path))


def resolve_extract_config(config: ExtractConfig | dict[str, Any] | None = None,
                           config_file: str | Path | None = None,
                           sets: dict[str, Any] | None = None,
                           config_name: str = "config") -> ExtractConfig:
    """An extraction's config from its sources, key by key (avsed.core.config.resolve)."""
    return resolve(ExtractConfig, config, config_file, sets, config_name)
