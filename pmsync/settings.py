"""Settings from the environment and `.env` (pydantic-settings). Secrets are SecretStr throughout."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_STATE_DIR = Path(".pmsync")


def _default_database_url() -> str:
    return f"sqlite:///{DEFAULT_STATE_DIR / 'pmsync.db'}"


class Settings(BaseSettings):
    """Everything pmsync reads from its environment.

    Names are the environment variable names (case-insensitive); a `.env` file in the working
    directory is read too. Secrets never appear in repr, logs or exception text.
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    pipedrive_base_url: str = Field(default="https://api.pipedrive.com", validation_alias="PIPEDRIVE_BASE_URL")
    pipedrive_api_token: SecretStr = Field(default=SecretStr(""), validation_alias="PIPEDRIVE_API_TOKEN")
    maileon_base_url: str = Field(default="https://api.maileon.com/1.0", validation_alias="MAILEON_BASE_URL")
    maileon_api_key: SecretStr = Field(default=SecretStr(""), validation_alias="MAILEON_API_KEY")
    database_url: str = Field(
        default_factory=_default_database_url,
        validation_alias=AliasChoices("PMSYNC_DATABASE_URL", "DATABASE_URL"),
    )

    # HTTP behaviour of the connectors
    http_timeout_seconds: float = Field(default=30.0, validation_alias="PMSYNC_HTTP_TIMEOUT_SECONDS")
    http_max_retries: int = Field(default=6, validation_alias="PMSYNC_HTTP_MAX_RETRIES")
    http_backoff_base_seconds: float = Field(default=0.5, validation_alias="PMSYNC_HTTP_BACKOFF_BASE_SECONDS")
    http_backoff_max_seconds: float = Field(default=60.0, validation_alias="PMSYNC_HTTP_BACKOFF_MAX_SECONDS")

    # Consent sync
    maileon_doi_mailing_key: str | None = Field(default=None, validation_alias="MAILEON_DOI_MAILING_KEY")
    maileon_doiplus: bool = Field(default=False, validation_alias="MAILEON_DOIPLUS")
    maileon_src: str = Field(default="pmsync", validation_alias="MAILEON_SRC")
    #: Up to 5 Pipedrive person custom fields (by name or key) sent to Maileon as custom fields.
    person_custom_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="PMSYNC_PERSON_CUSTOM_FIELDS"
    )
    #: "auto" detects Campaigns (marketing_status readable); "on"/"off" force it.
    campaigns: str = Field(default="auto", pattern="^(auto|on|off)$", validation_alias="PMSYNC_CAMPAIGNS")
    #: Emails settled per task run (one task = one batch).
    batch_size: int = Field(default=100, ge=1, le=500, validation_alias="PMSYNC_BATCH_SIZE")
    #: Re-read this far behind each watermark: Pipedrive times have second precision and Maileon
    #: reports may land late.
    watermark_overlap_seconds: int = Field(default=300, ge=0, validation_alias="PMSYNC_WATERMARK_OVERLAP_SECONDS")

    # Reconciliation (issue 5)
    #: Pipedrive tokens one reconcile may spend (0 = no cap). A full pass costs 10 tokens per 500
    #: persons (20,000 for 1,000,000); at the cap the run checkpoints and the next one resumes.
    token_budget_per_run: int = Field(default=50_000, ge=0, validation_alias="PMSYNC_TOKEN_BUDGET_PER_RUN")
    #: Auto-repair only while planned changes / contacts stays below this; above, stop for review.
    repair_threshold: float = Field(default=0.05, gt=0, le=1, validation_alias="PMSYNC_REPAIR_THRESHOLD")
    #: Persons whose Pipedrive changelog a reconcile may read (20 tokens each) to find an opt-out a
    #: salesperson overwrote before pmsync saw it (its webhook lost); 0 = never read it.
    changelog_reads_per_run: int = Field(default=200, ge=0, validation_alias="PMSYNC_CHANGELOG_READS_PER_RUN")
    #: A pmsync DOI still unconfirmed after this many days is reported (drift class doi_pending_too_long).
    doi_pending_max_days: float = Field(default=14.0, ge=0, validation_alias="PMSYNC_DOI_PENDING_MAX_DAYS")

    # Webhooks (receiver, registration, debounced runs)
    #: Public base URL at which Pipedrive and Maileon reach the receiver (e.g. https://sync.example.com);
    #: pmsync registers ``<url>/webhooks/pipedrive`` and ``<url>/webhooks/maileon/<event>``.
    webhook_url: str | None = Field(default=None, validation_alias="PMSYNC_WEBHOOK_URL")
    #: HTTP Basic credentials Pipedrive sends with every delivery (Pipedrive signs nothing).
    webhook_user: str = Field(default="pmsync", validation_alias="PMSYNC_WEBHOOK_USER")
    webhook_password: SecretStr = Field(default=SecretStr(""), validation_alias="PMSYNC_WEBHOOK_PASSWORD")
    #: Shared secret Maileon appends to its callbacks as ``?token=`` (a constant URL parameter).
    webhook_secret: SecretStr = Field(default=SecretStr(""), validation_alias="PMSYNC_WEBHOOK_SECRET")
    receiver_host: str = Field(default="127.0.0.1", validation_alias="PMSYNC_RECEIVER_HOST")
    receiver_port: int = Field(default=8100, ge=0, le=65535, validation_alias="PMSYNC_RECEIVER_PORT")
    #: Larger webhook bodies are refused with 413 (a person or deal event is a few KB).
    webhook_max_body_bytes: int = Field(default=256 * 1024, ge=1024, validation_alias="PMSYNC_WEBHOOK_MAX_BODY_BYTES")
    #: Webhook-triggered runs start this long after the first event of a burst and drain the whole burst.
    webhook_debounce_seconds: float = Field(default=5.0, ge=0, le=3600, validation_alias="PMSYNC_WEBHOOK_DEBOUNCE_SECONDS")

    # Deal events (issue 4)
    #: Deal events for persons Maileon does not know yet: "import" creates the contact at permission 1
    #: (none: no mails) with the event; "skip" sends only to existing contacts (others are dead-lettered
    #: with the reason "not in Maileon", re-drivable once the contact exists).
    deal_events_unknown_persons: Literal["import", "skip"] = Field(
        default="import", validation_alias="PMSYNC_DEAL_EVENTS_UNKNOWN_PERSONS"
    )
    #: Events per ``POST /transactions`` (each request also stays under Maileon's 9 MB).
    deal_events_batch_size: int = Field(default=1000, ge=1, le=2000, validation_alias="PMSYNC_DEAL_EVENTS_BATCH_SIZE")
    #: How long resolved person / organization names (and the person's email) are reused.
    deal_names_cache_seconds: float = Field(default=300.0, ge=0, validation_alias="PMSYNC_DEAL_NAMES_CACHE_SECONDS")
    #: An outbox event that failed this many sends is dead-lettered (`pmsync deadletters`, `pmsync redrive`).
    outbox_dead_after_attempts: int = Field(default=5, ge=1, validation_alias="PMSYNC_OUTBOX_DEAD_AFTER_ATTEMPTS")

    @field_validator("person_custom_fields", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("person_custom_fields")
    @classmethod
    def _at_most_five(cls, value: list[str]) -> list[str]:
        if len(value) > 5:
            raise ValueError(f"at most 5 person custom fields can be sent to Maileon, got {len(value)}")
        return value

    @field_validator("pipedrive_base_url", "maileon_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_base(cls, value: str | None) -> str | None:
        return value.strip().rstrip("/") or None if value else None

    @property
    def state_dir(self) -> Path:
        return DEFAULT_STATE_DIR


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests build `Settings(...)` directly instead."""
    return Settings()
