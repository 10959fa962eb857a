"""The one typed configuration of the pipeline.

Precedence (highest first): CLI flags (passed as overrides) > environment variables
(`ACTPRM_...`, nested with `__`, e.g. `ACTPRM_JUDGE__CONCURRENCY=8`) > a YAML file
(`ACTPRM_CONFIG` or `--config`) > the defaults written here.

Every knob appears here once, with its default and a one-line description. Stage functions in
`tasks/` take plain arguments; the CLI and the flows map a `Settings` onto them. Training reads one object,
`TrainConfig` (at the end): the `train` section plus the model and selection fields it shares, reused from their
sections; `python -m tasks.train` generates its flags from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from actprm.names import POOL_NAME_PATTERN


class ModelSettings(BaseModel):
    preset: str = Field("cpu", description="Model preset: tiny (tests), cpu (MiniLM backbone), qwen2.5-math-7b (paper, GPU).")
    num_heads: int = Field(32, description="Ensemble size E (paper: 32).")
    reg_lambda: float = Field(0.5, description="Anchor regularization weight lambda (paper: 0.5).")
    learning_probability: float = Field(1.0, description="Bootstrap: chance a head sees a given trajectory.")
    max_length: int = Field(512, description="Token budget per trajectory in training and pool scoring; later steps are cut and counted (predict, rerank and evaluate default to the backbone's whole context).")
    freeze_backbone: bool = Field(False, description="Train only the heads.")
    backbone_path: str | None = Field(None, description="Override the preset's backbone (local folder or hub id).")
    init_from: str | None = Field(None, description="Without a champion, start from this PRM folder (ActPRM, an export, "
                                  "Qwen2.5-Math-PRM: new heads, a released ActPRM: its heads) instead of a fresh preset.")


class UncertaintySettings(BaseModel):
    strategy: str = Field("actprm", description="Acquisition strategy: actprm, random, entropy, bald.")
    p_threshold: float = Field(0.95, ge=0.5, le=1, description="A step is confident when mu >= p or mu <= 1 - p "
                               "(paper: 0.95).")
    std_threshold: float = Field(0.005, ge=0, description="... and sigma <= this (paper: 0.005).")
    batch_size: int = Field(32, description="Trajectories per forward pass when scoring.")
    shard_size: int = Field(2048, description="Trajectories per scoring shard (the unit of resume).")
    dask_address: str | None = Field(
        None, description="Score shards on a Dask cluster: 'local:N' (N worker processes on this machine) or a "
                          "scheduler address ('tcp://host:8786'); None: in the flow's own process.")
    dask_shards_in_flight: int = Field(8, ge=1, description="Shards out on the Dask cluster at once (bounds memory).")


class JudgeSettings(BaseModel):
    backend: str = Field("verifier", description="Judge backend: verifier, oracle, openai, vllm.")
    url: str = Field("http://127.0.0.1:8000/v1", description="Base URL of an OpenAI-compatible endpoint.")
    model: str = Field("Qwen/QwQ-32B", description="Judge model name sent to the endpoint.")
    api_key: SecretStr | None = Field(None, description="API key (env ACTPRM_JUDGE_API_KEY); never logged.")
    prompt_version: str = Field("processbench", description="Critique prompt: processbench (ProcessBench's, "
                                "index in \\boxed{}) or actprm (ActivePRM's, <analysis_i> + <conclusion>), or a "
                                "pinned version (processbench-v1, processbench-v2, actprm-v1).")
    concurrency: int = Field(16, ge=1, description="Requests in flight at once.")
    timeout_s: float | None = Field(None, gt=0, description="Per-request limit in seconds, from sending to the whole "
                                    "answer (None: the model family's, 600 reasoning / 120 instruct).")
    max_retries: int = Field(6, ge=0, description="Retries per request on 429/5xx and connections that never opened "
                             "(a request cut off after sending is re-asked under max_parse_retries).")
    max_parse_retries: int = Field(2, ge=0, description="Re-asks of a trajectory after a paid request gave no label: an "
                                   "unparseable answer, or a timeout after sending (a truncated answer is not re-asked).")
    circuit_breaker: int = Field(20, ge=1, description="Stop the run after this many consecutive failed requests (timeouts, "
                                 "errors, unusable answers; re-asks count), or fewer: a whole wave in a row "
                                 "(concurrency, at least 5).")
    run_deadline_s: float | None = Field(None, gt=0, description="Wall-clock limit on one labeling run in seconds (None: "
                                         "none); at it no request is sent and those in flight are abandoned.")
    unanswered_charge: Literal["worst_case", "prompt"] = Field(
        "worst_case", description="What a request sent but never answered (timeout, cut, abandoned) costs the budget: "
        "worst_case (prompt bound + max_completion_tokens; hosted APIs bill generations the client gave up on) or "
        "prompt (the prompt's bound only; vLLM/SGLang serve abort a request whose client hung up).")
    max_completion_tokens: int | None = Field(None, ge=1, description="Completion tokens requested (and reserved) per "
                                              "call (None: the model family's, 12288 reasoning / 4096 instruct).")
    temperature: float | None = Field(None, ge=0, description="Sampling temperature (None: the model family's, 0.5 "
                                      "reasoning as ActivePRM's released code / 0 instruct).")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling top_p (None: the model family's, 0.95 reasoning "
                                "/ not sent for instruct).")
    structured_output: bool = Field(False, description="Ask vLLM for JSON-schema structured output.")


# Caps and prices must be finite and non-negative: NaN compares false with everything, so a NaN cap or price
# would let every "spent + want > cap" check pass and buy without limit; a negative price would refund.
Money = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]


class BudgetSettings(BaseModel):
    max_labels: Count | None = Field(None, description="Global cap on labels bought (None: no cap).")
    max_tokens: Count | None = Field(None, description="Global cap on judge tokens (prompt + completion).")
    max_cost: Money | None = Field(None, description="Global cap on money spent.")
    price_per_1k_tokens: Money = Field(0.0, description="Price of 1k judge tokens, for the cost cap.")
    per_pool_max_labels: Count | None = Field(None, description="Cap on labels bought for any one pool.")
    per_pool_max_tokens: Count | None = Field(None, description="Cap on tokens spent for any one pool.")
    per_pool_max_cost: Money | None = Field(None, description="Cap on money spent for any one pool.")


# Learning rates and clipping norms must be positive and finite (a NaN learning rate trains to NaN silently).
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class TrainSettings(BaseModel):
    epochs: int = Field(3, ge=1, description="Passes over the labeled set per round.")
    batch_size: int = Field(16, ge=1, description="Trajectories per optimizer micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    lr: Positive = Field(2e-4, description="AdamW peak learning rate.")
    head_lr: Positive | None = Field(
        3e-3, description="AdamW peak learning rate of the heads (None: lr). Fresh heads learn far slower than a "
                          "pre-trained backbone can bear: at lr alone the cpu preset's make run stays at F1 0.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Linear warmup share of the steps.")
    warmup_steps: Count | None = Field(None, description="Linear warmup optimizer steps; overrides warmup_ratio when set.")
    seed: int = Field(0, description="Seed for data order, head init and bootstrap masks.")
    in_training_selection: bool = Field(True, description="ActPRM: drop already-confident trajectories from each batch's loss.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="accelerate mixed precision (bf16 on GPU).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory on big backbones.")
    checkpoint_every: Count = Field(0, description="save_state every N optimizer steps (0: at the end only).")
    max_grad_norm: Positive | None = Field(1.0, description="Clip the gradient norm to this before each optimizer step "
                                           "(None: no clipping).")


class LoopSettings(BaseModel):
    rounds: int = Field(2, description="Maximum active-learning rounds.")
    labels_per_round: int = Field(100, description="Judge labels bought per round (the round's budget).")
    plateau_rounds: int = Field(2, description="Stop after this many rounds without an F1 gain.")
    eval_fraction: float = Field(0.2, description="Share of a gold-labeled pool held out for evaluation.")
    warm_start: bool = Field(True, description="Start each round from the previous round's model.")
    train_on: Literal["round", "all"] = Field(
        "round", description="Train each round on its newly bought labels (paper's online update) or on all labels so far.")


class RegistrySettings(BaseModel):
    model_name: str = Field("actprm-prm", description="MLflow registered model name.")
    min_delta: float = Field(0.0, description="Promote only when challenger F1 > champion F1 + min_delta (a tie never promotes).")


class IngestSettings(BaseModel):
    max_question_chars: int = Field(20_000, description="Longer questions are quarantined.")
    max_steps: int = Field(200, description="Trajectories with more steps are quarantined.")
    max_step_chars: int = Field(8_000, description="Trajectories with a longer step are quarantined.")
    quarantine_raw_chars: int = Field(2_000, description="Raw text kept per quarantined line.")
    validate_shard_rows: int = Field(200_000, description="Rows per pandas batch validated by Great Expectations.")


class SynthSettings(BaseModel):
    n: int = Field(1_000, description="Trajectories in the built-in sample pool.")
    seed: int = Field(0, description="Generator seed.")
    error_rate: float = Field(0.5, description="Share of trajectories with an injected first error.")
    mix: Literal["uniform", "reading"] = Field("uniform", description="Error-kind mix (actprm.synth.KIND_MIXES).")


class YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ACTPRM_CONFIG (or Settings(_config_file=...))."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | None):
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field, field_name):  # pragma: no cover - unused, __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if not self.path:
            return {}
        p = Path(self.path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        return data


class ConfigError(ValueError):
    """A configuration problem the user can fix; shown as a one-line error."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACTPRM_", env_nested_delimiter="__", extra="forbid")

    home: Path = Field(Path(".actprm"), description="Work dir: DuckDB file, MLflow store, reports, checkpoints (env ACTPRM_HOME).")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI; default: SQLite under home.")
    experiment: str = Field("actprm", description="MLflow experiment name.")
    default_pool: str = Field("sample", pattern=POOL_NAME_PATTERN,
                              description="Pool used when none is named (a pool name: see actprm.names).")

    model: ModelSettings = ModelSettings()
    uncertainty: UncertaintySettings = UncertaintySettings()
    judge: JudgeSettings = JudgeSettings()
    budget: BudgetSettings = BudgetSettings()
    train: TrainSettings = TrainSettings()
    loop: LoopSettings = LoopSettings()
    registry: RegistrySettings = RegistrySettings()
    ingest: IngestSettings = IngestSettings()
    synth: SynthSettings = SynthSettings()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, YamlSource(settings_cls, os.environ.get("ACTPRM_CONFIG")))

    # Derived locations: one place decides where things live under `home`.
    @property
    def duckdb_path(self) -> Path:
        return self.home / "actprm.duckdb"

    @property
    def tracking_uri(self) -> str:
        # A tracking server given the MLflow way (MLFLOW_TRACKING_URI) wins over the local default.
        return (self.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{(self.home / 'mlflow.db').resolve()}")

    @property
    def artifact_root(self) -> Path:
        return (self.home / "mlartifacts").resolve()

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def tmp_dir(self) -> Path:
        """Scratch files (an ingest's sanitized copies); what a killed command leaves here, the next one removes."""
        return self.home / "tmp"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    def judge_api_key(self) -> str | None:
        # ACTPRM_JUDGE_API_KEY is the documented variable; it comes first, as the environment beats a YAML file (a
        # key rotated in the environment must not lose to an old one in the config). judge.api_key holds the
        # YAML's, or ACTPRM_JUDGE__API_KEY's through pydantic.
        from_env = os.environ.get("ACTPRM_JUDGE_API_KEY")
        if from_env:
            return from_env
        return self.judge.api_key.get_secret_value() if self.judge.api_key is not None else None


# The released training recipe of the paper's backbone (sail-sg/ActivePRM examples/scripts: lr 1e-5, batch 64,
# 1 epoch, 500 warmup steps, bf16, 2,048 tokens; one learning rate for backbone and heads), as the defaults of the
# qwen2.5-math-7b preset: batch 64 = 8 per device (as released) x 8 accumulation steps on one GPU (set grad_accum to
# 8 / k on k GPUs). The defaults written in the sections above are the CPU presets' (tiny, cpu), tuned on the
# synthetic pool. The released script also sets p_threshold 5 and std_threshold -1, which trusts no trajectory:
# in-training selection off (TrainSettings.in_training_selection).
PRESET_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "qwen2.5-math-7b": {
        "train": {"lr": 1e-5, "head_lr": None, "batch_size": 8, "grad_accum": 8, "epochs": 1, "warmup_steps": 500,
                  "mixed_precision": "bf16"},
        "model": {"max_length": 2048},
    },
}


def _with_preset_defaults(settings: Settings) -> Settings:
    """A preset's own defaults (PRESET_DEFAULTS) for every field nobody set: a value given in YAML, the environment
    or a flag wins, even one equal to the generic default (pydantic's model_fields_set tells them apart)."""
    recipe = PRESET_DEFAULTS.get(settings.model.preset)
    if not recipe:
        return settings
    updates = {}
    for section, fields in recipe.items():
        part = getattr(settings, section)
        unset = {name: value for name, value in fields.items() if name not in part.model_fields_set}
        if unset:
            updates[section] = type(part).model_validate(part.model_dump(exclude_unset=True) | unset)
    return settings.model_copy(update=updates)


def load_settings(overrides: dict[str, Any] | None = None, config_file: str | Path | None = None) -> Settings:
    """Build Settings from defaults, YAML, env, then `overrides` (nested dicts, e.g. from CLI flags; None: not
    given), then the preset's own defaults (PRESET_DEFAULTS) for every field none of them set."""
    if config_file is not None:
        os.environ["ACTPRM_CONFIG"] = str(config_file)
    try:
        # As init arguments, overrides are deep-merged over env and YAML by pydantic-settings, and every section
        # keeps in model_fields_set only what some source gave.
        return _with_preset_defaults(Settings(**_given(overrides or {})))
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _given(overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` without the None values (flags not given), at every level."""
    return {k: _given(v) if isinstance(v, dict) else v for k, v in overrides.items() if v is not None}


def _one_line(exc: ValidationError) -> str:
    """'invalid setting budget.max_cost=nan: Input should be a finite number' (all problems, one line)."""
    parts = [f"{'.'.join(str(p) for p in e['loc'])}={e.get('input')!r}: {e['msg']}" for e in exc.errors()]
    return "invalid setting " + "; ".join(parts)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], {kk: vv for kk, vv in v.items() if vv is not None})
        else:
            out[k] = v
    return out


def runtime_environment(settings: Settings) -> dict[str, str]:
    """Environment every entry point sets before importing Prefect/MLflow/HF: offline, no analytics."""
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "GIT_PYTHON_REFRESH": "quiet",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # Ephemeral Prefect starts a local API server per process; on a busy 2-core box the
        # default 20 s start-up timeout is too short.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }


def flow_settings(config: dict[str, Any] | None = None, **explicit: dict[str, Any]) -> Settings:
    """Settings inside a flow run: env/YAML, then the `config` overrides, then the flow's typed params.

    Deployments pass a few typed parameters (they render as a form in the Prefect UI) plus an
    optional `config` mapping for any other knob; `explicit` maps section -> {field: value}.
    """
    merged = _deep_merge(config or {}, {k: v for k, v in explicit.items() if v})
    settings = load_settings(merged)
    for key, value in runtime_environment(settings).items():
        os.environ.setdefault(key, value)
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings


class TrainConfig(TrainSettings):
    """What one training run reads: `train_prm`'s config and the flags of `python -m tasks.train`.

    The `train` section plus the model and selection fields training shares with other stages; those keep their
    default and help in their own section (the FieldInfo is reused, never retyped). Built from Settings with
    `from_settings`; built directly (tests, benchmarks), a preset's own defaults (PRESET_DEFAULTS) fill the fields
    not given, as load_settings does.
    """

    model_config = ConfigDict(extra="forbid")

    preset: str = ModelSettings.model_fields["preset"]
    num_heads: int = ModelSettings.model_fields["num_heads"]
    init_from: str | None = ModelSettings.model_fields["init_from"]
    freeze_backbone: bool = ModelSettings.model_fields["freeze_backbone"]
    backbone_path: str | None = ModelSettings.model_fields["backbone_path"]
    max_length: int = ModelSettings.model_fields["max_length"]
    reg_lambda: float = ModelSettings.model_fields["reg_lambda"]
    learning_probability: float = ModelSettings.model_fields["learning_probability"]
    p_threshold: float = UncertaintySettings.model_fields["p_threshold"]
    std_threshold: float = UncertaintySettings.model_fields["std_threshold"]

    # The Settings section each field comes from (every other field: `train`).
    SHARED: ClassVar[dict[str, tuple[str, ...]]] = {
        "model": ("preset", "num_heads", "init_from", "freeze_backbone", "backbone_path", "max_length", "reg_lambda",
                  "learning_probability"),
        "uncertainty": ("p_threshold", "std_threshold"),
    }

    @model_validator(mode="before")
    @classmethod
    def _preset_recipe(cls, data: Any) -> Any:
        if isinstance(data, dict):
            preset = data.get("preset", ModelSettings.model_fields["preset"].default)
            for fields in PRESET_DEFAULTS.get(preset, {}).values():
                data = {name: value for name, value in fields.items() if name in cls.model_fields} | data
        return data

    @classmethod
    def section_of(cls, name: str) -> str:
        return next((section for section, names in cls.SHARED.items() if name in names), "train")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TrainConfig:
        """The run config of `settings` (`overrides`: per-run values, e.g. the round's warm start in init_from)."""
        values = settings.train.model_dump()
        for section, names in cls.SHARED.items():
            values |= {name: getattr(getattr(settings, section), name) for name in names}
        try:
            return cls.model_validate(values | overrides)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc)) from None
