import pytest

from moonlora.audio import AudioConfig
from moonlora.configs import DecodeConfig
from moonlora.contract import ContractMismatch, EvalContract, require_comparable


def contract(**changes):
    base = dict(manifest_sha256="m" * 64, audio=AudioConfig(), decode=DecodeConfig(),
                model_sha256="w" * 64, adapter_sha256=None)
    base.update(changes)
    return EvalContract.build(**base)


def test_fingerprint_is_stable_and_ignores_batching_and_device():
    assert contract().fingerprint == contract(decode=DecodeConfig(batch_size=1, device="cpu")).fingerprint
    assert contract().fingerprint != contract(decode=DecodeConfig(num_beams=4)).fingerprint
    round_trip = EvalContract.from_dict(contract().to_dict())
    assert round_trip == contract() and round_trip.fingerprint == contract().fingerprint


def test_mismatch_names_each_differing_field():
    a = contract()
    b = contract(decode=DecodeConfig(num_beams=2), audio=AudioConfig(rms_target_dbfs=-20), manifest_sha256="n" * 64)
    with pytest.raises(ContractMismatch) as error:
        require_comparable(a, b)
    message = str(error.value)
    for name in ("decode.num_beams", "audio.rms_target_dbfs", "manifest_sha256"):
        assert name in message
    assert "model_sha256" not in message


def test_adapter_may_differ_only_when_allowed():
    base, tuned = contract(), contract(adapter_sha256="a" * 64)
    require_comparable(base, tuned, allow=("adapter_sha256",))
    with pytest.raises(ContractMismatch, match="adapter_sha256"):
        require_comparable(base, tuned)
    with pytest.raises(ContractMismatch, match="model_sha256"):
        require_comparable(base, contract(model_sha256="v" * 64, adapter_sha256="a" * 64), allow=("adapter_sha256",))
