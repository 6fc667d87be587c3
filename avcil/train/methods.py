"""Methods as compositions: loss terms (each saying from which step it applies), a batch policy, a memory policy and
a classifier. The learner loop (avcil/train/learner.py) is the same for all of them; an AV-CIL ablation is AV-CIL
with terms removed.

What maps to what (docs/method.md#the-baselines-as-implemented):
- `avcil`: split CE + task-wise KD + D-AVSC instance and class (from step 1, as the authors' code starts them) +
  VAD; random exemplars drawn side by side with the new clips.
- `ss-il`: split CE + task-wise KD + exemplars side by side: AV-CIL without D-AVSC and VAD.
- `lwf`: split CE + task-wise KD, no memory (the authors' code).
- `afc`: CE + feature distillation of the fused feature weighted per channel by its importance to the old classes
  (the gradient of the old head's loss), herding exemplars side by side, NME; AFC's LSC classifier and its
  discriminative distillation of intermediate maps have no counterpart on a head over frozen encoders.
- `icarl` (= `icarl-nme`) as published: exemplars mixed into the training set in natural proportion, herding,
  CE + sigmoid binary cross-entropy distillation, nearest mean of exemplars; `icarl-fc` decides with the head's
  classifier. `icarl-balanced`: this project's earlier, stronger variant (half exemplars in every batch, softmax KD).
- `simplecil`: nearest class mean over the encoders' pooled features, no training (exemplar-free).
- `analytic`: ridge regression over a random expansion of the features (avcil/model/readout.py), updated in
  closed form per step, exemplar-free (ACIL / MMAL). Exemplars are still kept, for a later gradient refinement.
- `finetune` (lower bound) and `upper` (joint training on all data seen so far).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from avcil.errors import InvalidInput
from avcil.model import losses
from avcil.model.head import decides_by_fusion
from avcil.model.readout import FEATURES, readout_spec
from avcil.train.config import DEFAULT_INSTANCE_WEIGHT

ALIASES = {"icarl-nme": "icarl"}  # the earlier name of iCaRL with its NME classifier
DEFAULT_METHOD = "analytic"  # the best on benchmarks/results/accuracy-*.md (README.md#which-method)
ABLATABLE = ("split", "kd", "instance", "class", "vad")
BATCH_POLICIES = ("side-by-side", "mixed")
CLASSIFIERS = ("fc", "nme", "ncm", "analytic")
# The analytic readout's settings, measured on synthetic and AV-Digits (benchmarks/results/accuracy-*.md).
ANALYTIC_FEATURES = "pooled"
ANALYTIC_EXPANSION = 2048
ANALYTIC_RIDGE = 1.0


@dataclass(frozen=True)
class Method:
    name: str
    terms: list = field(default_factory=list)
    memory: str | None = None  # exemplar selection ('random', 'herding') or None for no memory
    # 'side-by-side': each batch = new clips + a fixed number of exemplars (the exemplar loader cycled);
    # 'mixed': exemplars join the training set and are drawn in natural proportion, each once per epoch.
    batch: str = "side-by-side"
    # 'fc': the head's linear classifier decides; 'nme' / 'ncm' / 'analytic': a readout (avcil/model/readout.py).
    classifier: str = "fc"
    readout: dict | None = None  # the readout's settings where the classifier is one
    joint: bool = False  # train on all data of the classes seen so far (the upper bound)

    def __post_init__(self) -> None:
        if self.batch not in BATCH_POLICIES:
            raise InvalidInput(f"unknown batch policy {self.batch!r}; expected one of {BATCH_POLICIES}")
        if self.classifier not in CLASSIFIERS:
            raise InvalidInput(f"unknown classifier {self.classifier!r}; expected one of {CLASSIFIERS}")

    def terms_at(self, step: int) -> list:
        return [t for t in self.terms if losses.applies_at(t, step)]

    @property
    def uses_fusion(self) -> bool:
        """Whether the method's model has the fusion part (avcil/model/head.py): it trains by gradient, or decides
        by what the fusion part computes (the linear classifier, or a readout of the fused feature). The analytic
        method and SimpleCIL on the encoders' pooled features do neither."""
        return bool(self.terms) or decides_by_fusion(self.readout)

    @property
    def readout_from_exemplars(self) -> bool:
        """iCaRL's NME is rebuilt from the exemplars after every step (the features under it change); NCM and the
        analytic readout accumulate every training clip once and never look back."""
        return self.classifier == "nme"

    def describe(self) -> dict:
        return {"name": self.name, "memory": self.memory, "batch": self.batch, "classifier": self.classifier,
                "readout": self.readout, "joint": self.joint,
                "terms": [{"type": type(t).__name__, **vars(t)} for t in self.terms]}


@dataclass(frozen=True)
class _Parts:
    """What the builders of METHOD_BUILDERS compose a method from: its name, the shared loss terms built from
    `build_method`'s arguments, and the arguments the builders read themselves."""
    name: str
    split_ce: losses.CrossEntropy
    taskwise_kd: losses.Distillation
    contrast: list  # D-AVSC instance and class, from step 1
    without: tuple[str, ...]
    distill_temperature: float
    vad_spatial_share: float
    readout_features: str
    expansion: int
    ridge: float
    analytic_base: str
    seed: int


def _avcil(p: _Parts) -> Method:
    terms = [losses.CrossEntropy(split="split" not in p.without), p.taskwise_kd, *p.contrast,
             losses.AttentionDistillation(p.vad_spatial_share)]
    return Method(p.name, [t for t in terms if t.name not in p.without or t.name == "ce"], memory="random")


def _icarl(p: _Parts) -> Method:
    nme = p.name != "icarl-fc"
    return Method(p.name, [losses.CrossEntropy(), losses.SigmoidDistillation()], memory="herding", batch="mixed",
                  classifier="nme" if nme else "fc", readout=readout_spec("mean", "fused") if nme else None)


def _analytic(p: _Parts) -> Method:
    return Method(p.name, _analytic_base_terms(p.readout_features, p.analytic_base, p.contrast), memory="random",
                  classifier="analytic",
                  readout=readout_spec("analytic", p.readout_features, p.expansion, p.ridge, p.seed))


# Every method, by name: the one list (the command line's choices, the benchmarks' rows) and how each is built.
# The order is the benchmarks' and the help's.
METHOD_BUILDERS: dict[str, Callable[[_Parts], Method]] = {
    "analytic": _analytic,
    "avcil": _avcil,
    "simplecil": lambda p: Method(p.name, [], classifier="ncm", readout=readout_spec("mean", "pooled")),
    "icarl": _icarl,
    "icarl-fc": _icarl,
    "icarl-balanced": lambda p: Method(p.name, [losses.CrossEntropy(),
                                                losses.Distillation(p.distill_temperature, taskwise=False)],
                                       memory="herding", classifier="nme", readout=readout_spec("mean", "fused")),
    "ss-il": lambda p: Method(p.name, [p.split_ce, p.taskwise_kd], memory="random"),
    "afc": lambda p: Method(p.name, [losses.CrossEntropy(), losses.ImportanceFeatureDistillation()],
                            memory="herding", classifier="nme", readout=readout_spec("mean", "fused")),
    "lwf": lambda p: Method(p.name, [p.split_ce, p.taskwise_kd]),
    "finetune": lambda p: Method(p.name, [losses.CrossEntropy()]),
    "upper": lambda p: Method(p.name, [losses.CrossEntropy()], joint=True),
}
METHODS = tuple(METHOD_BUILDERS)


def build_method(name: str, *, instance_weight: float = DEFAULT_INSTANCE_WEIGHT, class_weight: float = 1.0,
                 class_normalise: str = "batch", temperature: float = 0.05, distill_temperature: float = 2.0,
                 vad_spatial_share: float = 0.5, selection: str | None = None, without: tuple[str, ...] = (),
                 readout_features: str = ANALYTIC_FEATURES, expansion: int = ANALYTIC_EXPANSION,
                 ridge: float = ANALYTIC_RIDGE, analytic_base: str = "ce", seed: int = 0,
                 classifier: str | None = None) -> Method:
    """A method by name (METHOD_BUILDERS). `without` removes AV-CIL terms (ablations); `selection` overrides the
    memory policy; `readout_features`, `expansion`, `ridge` and `analytic_base` ('ce' or 'avcil': what trains the
    head at the base step when the readout reads the head's features) set the analytic readout; `classifier` ('fc'
    or 'nme') overrides the method's own (an ablation: the same training judged by another classifier)."""
    name = ALIASES.get(name, name)
    unknown = set(without) - set(ABLATABLE)
    if unknown:
        raise InvalidInput(f"cannot remove {sorted(unknown)}: removable terms are {list(ABLATABLE)}")
    if without and name != "avcil":
        raise InvalidInput(f"ablations (--without) apply to the avcil method only, not {name!r}")
    if readout_features not in FEATURES:
        raise InvalidInput(f"unknown readout features {readout_features!r}; expected one of {FEATURES}")
    builder = METHOD_BUILDERS.get(name)
    if builder is None:
        raise InvalidInput(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    contrast = [losses.InstanceContrast(temperature, weight=instance_weight, from_step=1),
                losses.ClassContrast(temperature, class_normalise, weight=class_weight, from_step=1)]
    method = builder(_Parts(name=name, split_ce=losses.CrossEntropy(split=True),
                            taskwise_kd=losses.Distillation(distill_temperature, taskwise=True), contrast=contrast,
                            without=tuple(without), distill_temperature=distill_temperature,
                            vad_spatial_share=vad_spatial_share, readout_features=readout_features,
                            expansion=expansion, ridge=ridge, analytic_base=analytic_base, seed=seed))
    if selection is not None and method.memory is not None:
        method = replace(method, memory=selection)
    if without:
        method = replace(method, name=f"{name}-without-{'-'.join(without)}")
    if classifier is not None and classifier != method.classifier:
        if classifier not in ("fc", "nme"):
            raise InvalidInput(f"a method's classifier can be switched to fc or nme, not {classifier!r}")
        method = replace(method, name=f"{method.name}-{classifier}", classifier=classifier,
                         readout=readout_spec("mean", "fused") if classifier == "nme" else None)
    return method


def _analytic_base_terms(features: str, base: str, contrast: list) -> list:
    """Gradient training at the base step only (until_step=0), and only where the readout reads the head's fused
    features: on the encoders' pooled features nothing is trained at all."""
    if base not in ("ce", "avcil"):
        raise InvalidInput(f"analytic base training must be 'ce' or 'avcil', not {base!r}")
    if features == "pooled":
        return []
    terms = [losses.CrossEntropy(until_step=0)]
    if base == "avcil":  # the D-AVSC terms from the base step, to shape the fused features the readout reads
        terms += [replace(t, from_step=0, until_step=0) for t in contrast]
    return terms
