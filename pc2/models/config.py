"""Engine configuration: one dataclass, every field documented, every PC² component a switch."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any, Literal


class ConfigError(ValueError):
    """A user-supplied config key or value the engine cannot use."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config '{key}': {message}")
        self.key = key
        self.message = message


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["lr=0.001", "backbone=vse"]`` -> ``{"lr": 0.001, "backbone": "vse"}`` (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for item in pairs or []:
        if "=" not in item:
            raise ConfigError(item, "--set expects KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


@dataclass
class PC2Config:
    # --- networks ---
    backbone: Literal["vse", "sgraf"] = "vse"  # vse: one vector per image/caption (indexable); sgraf: SGR/SAF reasoning
    embed_dim: int = 256  # joint-space width
    word_dim: int = 256  # token embedding width
    num_classes: int = 128  # K pseudo-classes of the shared P-Cls head
    word_skip: bool = True  # add a linear word->joint-space path beside the bi-GRU
    max_tokens: int = 40  # captions are cut to this many tokens
    sgraf_sim_dim: int = 64  # width of SGRAF similarity vectors
    sgraf_steps: int = 2  # SGR graph-reasoning steps

    # --- optimisation ---
    epochs: int = 6  # total epochs, warm-up included (detection peaks near epoch 5-6, then memorisation sets in: BENCHMARKS.md)
    warmup_epochs: int = 2  # epochs on all pairs before co-divide starts
    batch_size: int = 128
    lr: float = 2e-3
    lr_decay_epoch: int = 0  # epoch at which lr drops 10x (0 = never)
    weight_decay: float = 0.0
    grad_clip: float = 2.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0 = leave torch's default)

    # --- losses ---
    margin: float = 0.2  # alpha_0: the largest triplet margin (clean label y=1)
    warmup_margin: float = 0.2  # margin of the warm-up triplet (averaged over negatives)
    codivide_margin: float = 0.2  # fixed margin of the per-pair loss fed to the co-divide GMM
    pcls_symmetric: bool = True  # also train the caption prediction q against arg-max p (measured: warm-up ROC-AUC 0.78 -> 0.85)
    pcap_center: bool = False  # P-Cap compares batch-centred predictions
    pcls_weight: float = 1.0  # weight of the P-Cls cross-entropy
    entropy_weight: float = 1.0  # lambda on H(mean prediction over the batch)
    entropy_form: Literal["batch_mean", "per_sample"] = "batch_mean"  # per_sample is the reference code's form
    trusted_negatives: Literal["hardest", "average"] = "hardest"  # negatives of the soft-margin triplet on trusted pairs
    pcap_weight: float = 1.0  # weight of the pseudo-caption triplet on untrusted pairs
    grounding_loss_weight: float = 2.0  # vse: triplet on trusted pairs' word grounding against the hardest in-batch negatives (0 = off; BENCHMARKS.md)
    pcap_search: Literal["batch", "corpus"] = "corpus"  # untrusted images train on their corpus-wide pseudo-caption (batch: best in-batch pseudo-prediction, the paper's form)

    # --- PC² components (ablation switches) ---
    use_pcls: bool = True  # pseudo-classification head and its loss
    use_pcap: bool = True  # pseudo-captions for untrusted pairs during training
    use_cr: bool = True  # prediction-oscillation correspondence rectification
    use_cotrain: bool = True  # A trains on B's split and vice versa (False: own split)
    cross_fit_folds: int = 8  # K >= 2: K networks, net k never trains on fold k and each pair is judged by its fold's net; 0 = two co-trained networks, the paper's form (BENCHMARKS.md). Needs use_cotrain and noise_handling
    noise_handling: bool = True  # False: plain triplet on all pairs for every epoch (baseline)
    clean_threshold: float = 0.5  # w_loss above this puts a pair in the trusted split (cross-fitted; with cross_fit_folds=0 use 0.95: BENCHMARKS.md)
    gmm_max_iter: int = 20
    codivide_scale: Literal["log", "linear"] = "log"  # fit the co-divide GMM on log(loss): see codivide.log_scale

    # --- results ---
    label_threshold: float = 0.5  # confidence below this -> label "noisy"
    label_grounding_weight: float = 0.5  # final labels: weight of own-caption word grounding beside the loss in the clean GMM (0 = loss only; vse)
    pseudo_caption_strategy: Literal["pred", "embed", "combo", "grounded"] = "grounded"  # best measured in BENCHMARKS.md; see pseudo_caption.py
    grounding_tau: float = 0.1  # temperature of the soft minimum over a caption's word groundings (grounding loss, labels)
    pcap_grounding_tau: float = 0.2  # "grounded": that temperature when ranking pseudo-caption candidates; higher charges more for every word that could be wrong (BENCHMARKS.md)
    grounding_fit_weight: float = 0.9  # "grounded": weight of cos(image, caption) against cos(image, source image)
    min_pcap_similarity: float = 0.5  # P-Cap soft label is 0 below this similarity
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        checks = {
            "embed_dim": self.embed_dim > 0,
            "num_classes": self.num_classes >= 2,
            "epochs": self.epochs >= 1,
            "warmup_epochs": 0 <= self.warmup_epochs <= self.epochs,
            "batch_size": self.batch_size >= 2,
            "lr": self.lr > 0,
            "clean_threshold": 0 < self.clean_threshold < 1,
            "label_threshold": 0 <= self.label_threshold <= 1,
            "max_tokens": self.max_tokens >= 1,
            "grounding_tau": self.grounding_tau > 0,
            "pcap_grounding_tau": self.pcap_grounding_tau > 0,
            "grounding_fit_weight": 0 <= self.grounding_fit_weight <= 1,
            "label_grounding_weight": self.label_grounding_weight >= 0,
            "grounding_loss_weight": self.grounding_loss_weight >= 0,
            "cross_fit_folds": self.cross_fit_folds == 0 or self.cross_fit_folds >= 2,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(key, f"invalid value {getattr(self, key)!r}")
        literals = {
            "backbone": ("vse", "sgraf"),
            "entropy_form": ("batch_mean", "per_sample"),
            "pseudo_caption_strategy": ("pred", "embed", "combo", "grounded"),
            "trusted_negatives": ("hardest", "average"),
            "codivide_scale": ("log", "linear"),
            "pcap_search": ("batch", "corpus"),
        }
        for key, allowed in literals.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(key, f"must be one of {list(allowed)}, got {getattr(self, key)!r}")

    # --- (de)serialisation ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PC2Config":
        """Build from a plain dict; unknown keys and wrong types raise ``ConfigError``."""
        known = {f.name: f for f in fields(cls)}
        defaults = cls()
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(key, "unknown key")
            default = getattr(defaults, key)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(key, f"expected a boolean, got {value!r}")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(key, f"expected an integer, got {value!r}")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(key, f"expected a number, got {value!r}")
                value = float(value)
            elif isinstance(default, str) and not isinstance(value, str):
                raise ConfigError(key, f"expected a string, got {value!r}")
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str) -> "PC2Config":
        text = open(path, encoding="utf-8").read()
        if path.endswith((".yaml", ".yml")):
            raise ConfigError("config", "use a JSON or TOML config file")
        if path.endswith(".toml"):
            import tomllib

            return cls.from_dict(tomllib.loads(text))
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "PC2Config":
        return dataclasses.replace(self, **changes)

    # Fields that change the trained result; a checkpoint made under other values is not resumed.
    def training_fingerprint(self) -> str:
        # the strategy picks training pseudo-captions too; grounding_tau shapes the grounding loss; the fit
        # weight, the ranking temperature and the label weight only re-rank and re-label the final results
        skip = {"device", "threads", "label_threshold", "eval_batch_size", "epochs", "grounding_fit_weight", "pcap_grounding_tau", "label_grounding_weight"}
        return json.dumps({k: v for k, v in self.to_dict().items() if k not in skip}, sort_keys=True)
