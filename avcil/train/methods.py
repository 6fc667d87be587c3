"""Methods as compositions: a list of weighted loss terms, a memory policy and a classifier.

The learner loop (avcil/train/learner.py) is the same for all of them; an AV-CIL ablation is AV-CIL with
terms removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avcil.model import losses

METHODS = ("avcil", "finetune", "lwf", "icarl-nme", "icarl-fc", "upper")
ABLATABLE = ("split", "kd", "instance", "class", "vad")


@dataclass(frozen=True)
class Method:
    name: str
    terms: list = field(default_factory=list)
    memory: str | None = None  # exemplar selection ('random', 'herding') or None for no memory
    classifier: str = "fc"  # 'fc' (the head's classifier) or 'nme' (nearest mean of exemplars)
    joint: bool = False  # train on all data of the classes seen so far (the upper bound)

    @property
    def uses_teacher(self) -> bool:
        return any(getattr(t, "uses_teacher", False) for t in self.terms)

    def describe(self) -> dict:
        return {"name": self.name, "memory": self.memory, "classifier": self.classifier, "joint": self.joint,
                "terms": [{"type": type(t).__name__, **vars(t)} for t in self.terms]}


def build_method(name: str, *, instance_weight: float = 0.5, class_weight: float = 1.0,
                 class_normalise: str = "batch", temperature: float = 0.05, distill_temperature: float = 2.0,
                 vad_spatial_share: float = 0.5, selection: str | None = None,
                 without: tuple[str, ...] = ()) -> Method:
    """A method by name. `without` removes AV-CIL terms (ablations); `selection` overrides the memory policy."""
    unknown = set(without) - set(ABLATABLE)
    if unknown:
        raise ValueError(f"cannot remove {sorted(unknown)}: removable terms are {list(ABLATABLE)}")
    if without and name != "avcil":
        raise ValueError(f"ablations (--without) apply to the avcil method only, not {name!r}")
    plain_ce = losses.CrossEntropy()
    old_class_kd = losses.Distillation(distill_temperature, taskwise=False)
    if name == "avcil":
        terms = [
            losses.CrossEntropy(split="split" not in without),
            losses.Distillation(distill_temperature, taskwise=True),
            losses.InstanceContrast(temperature, weight=instance_weight),
            losses.ClassContrast(temperature, class_normalise, weight=class_weight),
            losses.AttentionDistillation(vad_spatial_share),
        ]
        kept = [t for t in terms if t.name not in without or t.name == "ce"]
        method = Method(name, kept, memory="random")
    elif name == "finetune":
        method = Method(name, [plain_ce])
    elif name == "lwf":
        method = Method(name, [plain_ce, old_class_kd])
    elif name in ("icarl-nme", "icarl-fc"):
        method = Method(name, [plain_ce, old_class_kd], memory="herding", classifier=name.split("-")[1])
    elif name == "upper":
        method = Method(name, [plain_ce], joint=True)
    else:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    if selection is not None and method.memory is not None:
        method = Method(method.name, method.terms, selection, method.classifier, method.joint)
    if without:
        method = Method(f"{name}-without-{'-'.join(without)}", method.terms, method.memory, method.classifier)
    return method
