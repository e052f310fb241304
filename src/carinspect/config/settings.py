"""Infrastructure settings from the environment (never from params.yaml)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # the embedded store every command uses by default


class Settings(BaseSettings):
    """Infrastructure settings from the environment (never from params.yaml)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    mlflow_tracking_uri: str = Field(
        DEFAULT_TRACKING_URI, validation_alias="MLFLOW_TRACKING_URI",
        description="where runs and model versions go (default: the embedded store here)",
    )  # fmt: skip
    kfp_run_id: str | None = Field(
        None, validation_alias="KFP_RUN_ID", description="the KFP run, tagged on the training run"
    )
    # the commit an image was built from (docker/Dockerfile sets them): a pod has no checkout
    image_git_commit: str | None = Field(
        None, validation_alias="CARINSPECT_GIT_COMMIT",
        description="lineage where there is no checkout (the images set it at build time)",
    )  # fmt: skip
    image_git_dirty: str | None = Field(
        None, validation_alias="CARINSPECT_GIT_DIRTY",
        description="whether that commit's tree was dirty (true/false)",
    )  # fmt: skip
    user: str | None = Field(
        None, validation_alias="CARINSPECT_USER", description="who is named in the audit trail"
    )
    webhook_secret: SecretStr | None = Field(
        None, validation_alias="CARINSPECT_WEBHOOK_SECRET", description="signs alias webhooks"
    )
