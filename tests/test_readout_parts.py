"""The analytic readout weighs each separately pooled part of its inputs alike (HeadConfig.audio_parts)."""

import numpy as np
import pytest
import torch

from avcil.errors import InvalidInput
from avcil.model.encoders import audio_parts
from avcil.model.head import FusionHead, HeadConfig
from avcil.model.readout import AnalyticReadout, readout_spec


def standardised(readout: AnalyticReadout, x: torch.Tensor) -> torch.Tensor:
    return (x - readout.shift) / readout.spread


def test_each_part_gets_an_equal_share_of_the_standardised_vector_whatever_its_width():
    x = torch.randn(50, 10) * torch.linspace(0.1, 5.0, 10)  # columns of any scale
    weighed = AnalyticReadout(readout_spec("analytic", expansion=0), 10, 2, parts=[8, 2])
    weighed.accumulate(x, torch.arange(50) % 2)
    energy = standardised(weighed, x).pow(2).mean(dim=0)  # per column, (n - 1) / n of its share
    shares = torch.stack([energy[:8].sum(), energy[8:].sum()]) * 50 / 49
    torch.testing.assert_close(shares, torch.tensor([0.5, 0.5]), rtol=1e-3, atol=1e-4)
    # Without parts (models made before them), each column alike: the wide part takes 8/10.
    plain = AnalyticReadout(readout_spec("analytic", expansion=0), 10, 2)
    plain.accumulate(x, torch.arange(50) % 2)
    energy = standardised(plain, x).pow(2).mean(dim=0) * 50 / 49
    torch.testing.assert_close(energy[:8].sum(), torch.tensor(0.8), rtol=1e-3, atol=1e-4)
    # Parts of one width change nothing.
    even = AnalyticReadout(readout_spec("analytic", expansion=0), 10, 2, parts=[5, 5])
    even.accumulate(x, torch.arange(50) % 2)
    torch.testing.assert_close(even.spread, plain.spread)


def test_a_narrow_part_that_names_the_class_is_not_drowned_by_a_wide_one_that_does_not():
    # 3 classes; 4 columns hold the class (its centre plus noise), 300 columns hold noise of the same scale.
    rng = np.random.default_rng(0)

    def clips(n):
        labels = rng.integers(0, 3, n)
        centres = np.eye(3, 4) * 2.0
        informative = centres[labels] + rng.standard_normal((n, 4))
        return torch.from_numpy(np.hstack([rng.standard_normal((n, 300)), informative]).astype(np.float32)), labels

    (train, train_labels), (test, test_labels) = clips(150), clips(300)
    accuracy = {}
    for name, parts in (("columns", None), ("parts", [300, 4])):
        readout = AnalyticReadout(readout_spec("analytic", expansion=512), 304, 3, parts=parts)
        readout.accumulate(train, torch.from_numpy(train_labels))
        readout.solve()
        accuracy[name] = float((readout(test).argmax(dim=1).numpy() == test_labels).mean())
    assert accuracy["parts"] > 0.7 > accuracy["columns"] + 0.1, accuracy


def test_the_head_gives_every_readout_its_parts_and_records_them():
    config = HeadConfig(704, 320, 320, fusion=False, readout=readout_spec("analytic"), audio_parts=[512, 96, 96])
    readout = FusionHead(config, 3).readout
    assert readout.input_parts == [512, 96, 96, 320, 320]
    assert {name: part.input_parts for name, part in readout.parts.items()} == {"audio": [512, 96, 96],
                                                                                "video": [320, 320]}
    assert HeadConfig(**config.to_dict()) == config  # as the manifest records and reads it back (a JSON list)
    assert FusionHead(HeadConfig(704, 320, 320, fusion=False, readout=readout_spec("analytic")), 3).readout \
        .input_parts is None  # a model from before


def test_the_lite_profiles_audio_vector_has_three_parts_and_other_profiles_one():
    assert audio_parts({"settings": {"audio": {"kind": "sfx_speech"}}}, 704) == (512, 96, 96)
    assert audio_parts({"settings": {"audio": {"kind": "kaldi_fbank"}}}, 768) is None
    assert audio_parts(None, 32) is None


def test_parts_that_do_not_fit_the_inputs_are_refused():
    with pytest.raises(InvalidInput, match="add up to the audio width 704"):
        HeadConfig(704, 320, 320, audio_parts=[512, 96])
    with pytest.raises(InvalidInput, match="do not add up"):
        AnalyticReadout(readout_spec("analytic"), 10, 2, parts=[4, 4])
    with pytest.raises(InvalidInput, match="cut a part"):
        AnalyticReadout(readout_spec("analytic"), 10, 2, columns={"audio": (0, 5), "video": (5, 10)}, parts=[4, 6])
