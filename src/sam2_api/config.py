"""Every setting of the service, read from the environment in one place.

Nothing else in the package reads ``os.environ``. AWS credentials are the exception by design:
boto3's own credential chain reads ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or a profile,
or an instance role), so they never pass through our code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import sizes
from .sizes import MODEL_IDS


# Written into the Bento by scripts/build_bento.sh (SAM2_BENTO_MODEL=<tag>); real environment
# variables win over it. Relative to the working directory, which is the Bento's own when served.
PACKAGED_ENV_FILE = "bento/packaged.env"

# Defaults of the request-body bounds, also the defaults of guard.RequestGuard's arguments.
BODY_TIMEOUT_S = 60.0
MIN_UPLOAD_BYTES_PER_S = 8 * 1024
# Defaults of the refinement settings, also those of engine.Engine's arguments.
MASK_CACHE_MAX_BYTES = 256 * 1024**2  # 1,024 masks' logits of 256 KiB
MASK_INPUT_LOGIT = 10.0  # what SAM 2's video predictor makes of a mask it is handed
# A mask_input file becomes 256x256 cells: a sharp 1-bit or 8-bit mask of 16 megapixels is a few
# hundred KB; these bound its decoding to about 100 MB (4 bytes a pixel decoded, 2 more converted).
MASK_INPUT_MAX_BYTES = 4 * 1024**2
MASK_INPUT_MAX_PIXELS = 16_000_000
# The formats (RLE, polygons) of one response's masks: 32 complex masks of a 4K photo with both
# formats take about 14 MB; noisy masks, 5 MB each. In an API worker: about 13 times this at most.
MAX_RESPONSE_BYTES = 32 * 1024**2


class Settings(BaseSettings):
    """The service's configuration; field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", env_file=PACKAGED_ENV_FILE)

    # --- the model ---
    sam2_model: str = Field(
        "facebook/sam2.1-hiera-tiny",
        description="Hugging Face id of the SAM 2.1 variant; also picks the config for SAM2_CHECKPOINT.",
    )
    sam2_checkpoint: Path | None = Field(
        None, description="Local checkpoint file (Meta's format); when set, nothing is downloaded."
    )
    sam2_bento_model: str | None = Field(
        None,
        description="Tags of the weights packaged into the Bento, comma-separated, one per size "
        "(scripts/import_model.py, then scripts/build_bento.sh, which records them and SAM2_MODELS in "
        "bento/packaged.env).",
    )
    sam2_config: str | None = Field(
        None,
        description="sam2 config name for SAM2_CHECKPOINT, e.g. configs/sam2.1/sam2.1_hiera_l.yaml; "
        "default: the config of SAM2_MODEL.",
    )
    sam2_models: str | None = Field(
        None,
        description="Comma-separated SAM 2.1 sizes this server serves, each an id (facebook/sam2.1-hiera-small) "
        "or a short name (hiera_small, small); a request picks one with its `model` field. Default: SAM2_MODEL "
        "alone. Requests without `model` get SAM2_MODEL when it is listed, else the first listed. Each is "
        "loaded on first use (SAM2_MODEL at start-up).",
    )
    sam2_checkpoints: str | None = Field(
        None,
        description="Local checkpoint files of other sizes than SAM2_MODEL's (SAM2_CHECKPOINT), as "
        "comma-separated size=path, e.g. hiera_small=/ckpt/sam2.1_hiera_small.pt; a size without one comes "
        "from the Bento's packaged weights or Hugging Face.",
    )
    sam2_models_max_bytes: int = Field(
        2 * 1024**3, gt=0,
        description="Memory bound of the loaded sizes' weights on the model's device; beyond it the least "
        "recently used size other than the default is unloaded (and loaded again when asked for). One size's float32 weights: "
        "tiny 156 MB, small 184 MB, base-plus 323 MB, large 898 MB: the default holds all four.",
    )
    sam2_device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto = CUDA when available, else CPU."
    )
    sam2_max_image_pixels: int = Field(
        50_000_000, gt=0, description="Largest accepted image, in pixels (width × height)."
    )
    sam2_max_image_side: int = Field(
        16384, gt=0, le=65535,
        description="Longest accepted image side, in pixels: it bounds SAM 2's resize (a side × 1024 "
        "float copy) for images of any aspect ratio.",
    )

    sam2_cache_max_entries: int = Field(
        64, ge=0, description="Image embeddings kept for repeat requests; 0 disables the cache."
    )
    sam2_cache_max_bytes: int | None = Field(
        None, ge=0,
        description="Memory bound of the embedding cache; default 4 GiB on CUDA, 1 GiB on CPU "
        "(hiera models: about 16 MiB per image).",
    )
    sam2_mask_cache_max_bytes: int = Field(
        MASK_CACHE_MAX_BYTES, ge=0,
        description="Memory bound of the low-resolution logits kept for previous_mask_id (256 KiB per "
        "returned mask, on the model's device); 0 keeps none, so every previous_mask_id is unknown.",
    )
    sam2_mask_input_max_bytes: int = Field(
        MASK_INPUT_MAX_BYTES, gt=0,
        description="Largest accepted mask_input file, in bytes (413 beyond; it is stretched to 256×256 anyway).",
    )
    sam2_mask_input_max_pixels: int = Field(
        MASK_INPUT_MAX_PIXELS, gt=0,
        description="Largest accepted mask_input, in pixels (width × height; 413 from its header, before decoding).",
    )
    sam2_max_response_bytes: int = Field(
        MAX_RESPONSE_BYTES, gt=0,
        description="Most bytes of RLE strings and polygon vertices (as JSON) one response may carry, all "
        "its masks together: counted as each mask's formats are made, 422 at the first that passes it.",
    )
    sam2_mask_input_logit: float = Field(
        MASK_INPUT_LOGIT, gt=0, le=32,
        description="The logit a mask_input file's object (+) and background (−) become in SAM 2's "
        "mask prompt (docs/REFINEMENT.md measures it).",
    )
    sam2_encoder_batch: int = Field(
        1, ge=1, le=64,
        description="Encode up to this many new images in one call when they arrive together; 1 = off.",
    )
    sam2_encoder_batch_wait_ms: float = Field(
        0, ge=0, le=1000,
        description="How long the first image of a batch waits for others; 0 = batch only what "
        "queued up while the encoder was busy.",
    )
    sam2_compile: bool = Field(
        False, description="torch.compile the image encoder (CUDA; slower startup, faster encoder)."
    )
    sam2_shutdown_grace_s: float = Field(
        5.0, gt=0, le=25,
        description="Seconds a worker lets requests in flight finish after SIGTERM or Ctrl+C before it "
        "exits anyway (every process of the server is gone within about this plus 3 s).",
    )
    sam2_state_dir: Path | None = Field(
        None,
        description="Folder for this server's task store, tracking progress and Prometheus files; "
        "default: a new temporary folder per start, so that servers side by side never share one.",
    )
    sam2_api_workers: int = Field(
        default_factory=lambda: min(4, os.cpu_count() or 1), ge=1, le=64,
        description="Processes of the API service (HTTP, image decoding, PNG, S3); the model service "
        "always has one. Default: the CPU count, at most 4.",
    )

    # --- video tracking (the `track` task) ---
    sam2_video_max_upload_bytes: int = Field(
        128 * 1024**2, gt=0,
        description="Largest accepted clip, in bytes: a /track/submit body, or what video_url fetches (413 beyond).",
    )
    sam2_video_body_timeout_s: float = Field(
        600.0, gt=0, le=24 * 3600,
        description="Longest time a clip may take to arrive, uploaded or fetched from video_url, in seconds.",
    )
    sam2_video_max_frames: int = Field(1800, gt=0, description="Most frames a clip may have (413 beyond).")
    sam2_video_max_pixels: int = Field(
        3840 * 2160, gt=0, description="Largest frame of a clip, in pixels (width × height; 413 beyond)."
    )
    sam2_video_max_seconds: float = Field(600.0, gt=0, description="Longest clip, in seconds (413 beyond).")
    sam2_video_job_timeout_s: float = Field(
        3600.0, ge=300, le=24 * 3600,
        description="Longest a tracking job may run on the model service, in seconds; also the model "
        "service's request timeout (its stream of masks is one request).",
    )
    sam2_video_max_waiting_per_key: int = Field(
        4, ge=1, le=8,
        description="Most clips of one API key (of everyone, without keys) waiting on a model replica "
        "behind the one being tracked; of 8 waiting places in all, so that one key's flood leaves room "
        "for the others (503 beyond, saying so). Waiting clips take turns across keys.",
    )
    sam2_video_offload: Literal["auto", "none", "frames", "frames_and_state"] = Field(
        "auto",
        description="Where a clip's frames and SAM 2's tracking state live on CUDA: none = GPU memory; "
        "frames = frames in host memory (SAM 2's offload_video_to_cpu); frames_and_state = both "
        "(offload_state_to_cpu too); auto = on the GPU what fits in SAM2_VIDEO_GPU_BYTES, frames first out.",
    )
    sam2_video_gpu_bytes: int = Field(
        8 * 1024**3, gt=0,
        description="GPU memory one tracking job may use for frames and state when SAM2_VIDEO_OFFLOAD=auto.",
    )

    # --- segment everything (POST /segment_everything) ---
    sam2_everything_deadline_s: float = Field(
        60.0, gt=0, le=290,
        description="Longest time one segment-everything request may take, in seconds: the model service "
        "(queue, encoder, point batches) gets what is left of it, and the API side's formats and PNGs count "
        "too; a request that would run past it gets 503 saying what to reduce.",
    )
    sam2_everything_max_points: int = Field(
        16384, ge=1,
        description="Most decoder points one segment-everything request may ask for, all crop layers "
        "together (400 beyond).",
    )
    sam2_everything_max_batch_bytes: int = Field(
        8 * 1024**3, gt=0,
        description="Memory bound of one batch of points of segment everything (per point about 32 MiB "
        "plus 12 bytes per image pixel per candidate mask); points_per_batch is lowered to fit, or 400 "
        "when given too large.",
    )

    # --- access ---
    sam2_api_keys: SecretStr | None = Field(
        None, description="Comma-separated API keys; when set, the API routes need `Authorization: Bearer <key>`."
    )
    sam2_internal_token: SecretStr | None = Field(
        None,
        description="Shared secret between the API service and the model service (sent in the "
        "X-SAM2-Internal-Token header; the model service refuses calls without it). Required on both "
        "when they run apart; `bentoml serve` of both makes a random one per start when unset.",
    )
    sam2_max_upload_bytes: int = Field(
        64 * 1024**2, gt=0, description="Largest accepted request body, in bytes (413 beyond)."
    )
    # A body that trickles in holds one of BentoML's max_concurrency slots until it is complete;
    # these two bound how long that can be (408 beyond).
    sam2_body_timeout_s: float = Field(
        BODY_TIMEOUT_S, gt=0, le=3600,
        description="Longest time a request body may take to arrive, in seconds (408 beyond).",
    )
    sam2_min_upload_bytes_per_s: int = Field(
        MIN_UPLOAD_BYTES_PER_S, ge=0,
        description="Slowest accepted upload, in bytes per second on average after its first 5 s "
        "(408 below); 0 = no minimum rate, only SAM2_BODY_TIMEOUT_S.",
    )
    sam2_header_timeout_s: float = Field(
        10.0, gt=0, le=300,
        description="Longest time a client may take to send a request's headers, in seconds, from "
        "connecting or from its previous response: the connection is then closed, with 408 when part of a "
        "request had arrived (both services).",
    )

    # --- S3 ---
    s3_bucket_name_staging: str | None = Field(
        None, description="Bucket for masks; unset = uploads skipped, mask_url null."
    )
    aws_region: str = Field("us-east-1", description="Region of the bucket.")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, R2, a local server); URLs become path-style."
    )
    s3_mask_prefix: str = Field("sam2-api-masks/", description="Key prefix of stored masks.")
    s3_object_acl: str | None = Field(
        None, description="Canned ACL for each mask, e.g. public-read; off by default."
    )
    s3_input_buckets: str = Field(
        "", description="Comma-separated buckets that image_url may read from (s3://bucket/key)."
    )
    s3_url_mode: Literal["public", "presigned"] = Field(
        "public", description="public: the object's plain URL; presigned: a signed GET URL (private buckets)."
    )
    s3_presign_expires: int = Field(
        3600, ge=1, le=7 * 24 * 3600, description="Lifetime of presigned URLs, in seconds (at most 7 days)."
    )
    s3_upload_deadline: float = Field(
        10.0, gt=0, le=120,
        description="Seconds a request waits on S3 for all its mask uploads together (making the PNGs "
        "does not count); masks not stored by then get mask_url null.",
    )

    # --- Label Studio (the ML backend under /labelstudio) ---
    label_studio_url: str | None = Field(
        None,
        description="Label Studio's address as this service reaches it (e.g. http://label-studio:8080): task "
        "images that Label Studio serves (/data/upload/..., /data/local-files/...) are fetched from there. Only "
        "this origin is exempt from the rule that image URLs reach public addresses.",
    )
    label_studio_api_key: SecretStr | None = Field(
        None,
        description="A Label Studio access token (Account & Settings), sent as `Authorization: Token <key>` to "
        "LABEL_STUDIO_URL only, to fetch task images.",
    )

    @property
    def api_keys(self) -> tuple[str, ...]:
        if self.sam2_api_keys is None:
            return ()
        return tuple(key.strip() for key in self.sam2_api_keys.get_secret_value().split(",") if key.strip())

    @property
    def bento_models(self) -> tuple[str, ...]:
        return tuple(tag.strip() for tag in (self.sam2_bento_model or "").split(",") if tag.strip())

    @property
    def internal_token(self) -> str | None:
        return self.sam2_internal_token.get_secret_value() if self.sam2_internal_token else None

    @property
    def input_buckets(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.s3_input_buckets.split(",") if name.strip())

    @property
    def video_limits(self):
        from .video import VideoLimits

        return VideoLimits(self.sam2_video_max_frames, self.sam2_video_max_pixels, self.sam2_video_max_seconds)

    def cache_max_bytes(self, device_type: str) -> int:
        if self.sam2_cache_max_bytes is not None:
            return self.sam2_cache_max_bytes
        return (4 if device_type == "cuda" else 1) * 1024**3

    @field_validator("sam2_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODEL_IDS:
            raise ValueError(f"SAM2_MODEL must be one of {', '.join(MODEL_IDS)}; got {value!r}")
        return value

    @property
    def served_models(self) -> tuple[str, ...]:
        """The ids of SAM2_MODELS (default: SAM2_MODEL), each once, in order."""
        return sizes.parse_sizes(self.sam2_models) if self.sam2_models else (self.sam2_model,)

    @property
    def default_model(self) -> str:
        """The size a request without ``model`` gets."""
        return self.sam2_model if self.sam2_model in self.served_models else self.served_models[0]

    def model_for(self, name: object, field: str = "model") -> str:
        """The served id a request's ``model`` (or Roboflow's ``sam2_version_id``: ``field``) names: the
        default size when it is left out, 400 naming the served ones when it is not served."""
        return sizes.served_model(name, self.served_models, self.default_model, field)

    @property
    def checkpoints(self) -> dict[str, Path]:
        """Local checkpoint file by size id: SAM2_CHECKPOINT (SAM2_MODEL's), then SAM2_CHECKPOINTS."""
        own = {} if self.sam2_checkpoint is None else {self.sam2_model: self.sam2_checkpoint}
        return own | sizes.parse_checkpoints(self.sam2_checkpoints)

    @model_validator(mode="after")
    def _sizes_and_their_files(self) -> "Settings":
        self.served_models, self.checkpoints  # noqa: B018 (each says what is wrong in its ValueError)
        if self.sam2_checkpoint is not None and self.sam2_models and self.sam2_model not in self.served_models:
            raise ValueError(f"SAM2_CHECKPOINT is the checkpoint of SAM2_MODEL={self.sam2_model}, which SAM2_MODELS "
                             "does not list: add it there, or name the file in SAM2_CHECKPOINTS")
        return self

    @field_validator("sam2_checkpoint")
    @classmethod
    def _checkpoint_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"SAM2_CHECKPOINT={value} is not a file")
        return value

    @field_validator("label_studio_url")
    @classmethod
    def _label_studio_origin(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query \
                or parts.fragment:
            raise ValueError(f"LABEL_STUDIO_URL must be http(s)://host[:port][/path]; got {value!r}")
        return value

    @field_validator(
        "s3_bucket_name_staging", "s3_endpoint_url", "s3_object_acl", "sam2_config", "sam2_bento_model", "sam2_models",
        "sam2_internal_token", "label_studio_api_key",
    )
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None
