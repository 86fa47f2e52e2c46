import pytest

from moonlora.data.audio import AudioConfig
from moonlora.configs import DecodeConfig
from moonlora.eval.contract import ContractMismatch, EvalContract, require_comparable


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


def test_runtime_is_recorded_and_named_when_it_differs():
    torch_contract = contract()
    assert torch_contract.runtime == {"name": "torch", "precision": "float32"}
    assert contract(decode=DecodeConfig(dtype="bfloat16")).runtime == {"name": "torch", "precision": "bfloat16"}
    deployed = contract(runtime={"name": "onnxruntime", "precision": "int8"}, model_sha256="o" * 64)
    assert deployed.fingerprint != torch_contract.fingerprint
    with pytest.raises(ContractMismatch) as error:
        require_comparable(torch_contract, deployed, allow=("model_sha256",))
    assert "runtime.name ('torch' vs 'onnxruntime')" in str(error.value)
    assert "runtime.precision ('float32' vs 'int8')" in str(error.value)
    require_comparable(torch_contract, deployed, allow=("runtime", "model_sha256"))


def test_contract_from_before_the_runtime_field_reads_as_torch():
    data = contract(decode=DecodeConfig(dtype="bfloat16")).to_dict()
    del data["runtime"]
    assert EvalContract.from_dict(data).runtime == {"name": "torch", "precision": "bfloat16"}
    del data["model_sha256"]
    with pytest.raises(ContractMismatch, match="lacks field\\(s\\): model_sha256"):
        EvalContract.from_dict(data)


LOAD_CHECK = {"status": "complete", "tensors": 35, "vocabulary": 32000, "embedding_rows": 32768, "sampling_rate": 16000}


def test_model_type_is_recorded_and_named_when_it_differs():
    moonshine, streaming = contract(), contract(model_type="moonshine_streaming")
    assert moonshine.model_type == "moonshine" and moonshine.to_dict()["model_type"] == "moonshine"
    assert moonshine.fingerprint != streaming.fingerprint
    with pytest.raises(ContractMismatch, match="model_type \\('moonshine' vs 'moonshine_streaming'\\)"):
        require_comparable(moonshine, streaming)


def test_load_check_is_recorded_but_neither_compared_nor_fingerprinted():
    checked = contract(load_check=LOAD_CHECK)
    assert checked.to_dict()["load_check"] == LOAD_CHECK
    assert EvalContract.from_dict(checked.to_dict()).load_check == LOAD_CHECK
    assert checked == contract() and checked.fingerprint == contract().fingerprint
    require_comparable(checked, contract())


def test_contract_from_before_model_types_reads_as_moonshine():
    data = contract(load_check=LOAD_CHECK).to_dict()
    del data["model_type"], data["load_check"]
    legacy = EvalContract.from_dict(data)
    assert legacy.model_type == "moonshine" and legacy.load_check is None
    require_comparable(legacy, contract(load_check=LOAD_CHECK))


def test_the_family_front_end_is_recorded_not_compared_and_old_contracts_still_read():
    streaming = contract(model_type="moonshine_streaming")
    assert "80-sample frames" in streaming.frontend and "sliding-window" in streaming.frontend
    assert "GroupNorm" in contract().frontend
    old = {key: value for key, value in contract().to_dict().items() if key != "frontend"}
    read = EvalContract.from_dict(old)
    assert read.frontend is None and read.fingerprint == contract().fingerprint
    require_comparable(read, contract())
